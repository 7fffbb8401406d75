//! Configuration: a TOML file, every key also a command-line flag and an
//! environment variable (`LIVY_PROXY_<KEY>`), flags and env winning over the file.
//!
//! Each key is declared once, as a field of [`Keys`]: its doc comment is the
//! flag's help, its `#[arg]` the flag and the variable, its name in
//! kebab-case the TOML key. The file is read into a `Keys`, the flags given
//! are laid over it (clap's `update_from_arg_matches` sets only what was
//! given), and the result is built into typed sections, each the settings
//! struct its module runs with: [`Config::http`], [`Config::tcp`],
//! [`Config::discovery`], [`Config::admin`], [`Config::log`],
//! [`Config::runtime`]. Any bad file, key or value becomes a [`ConfigError`]
//! naming the key; the binary prints it on one line and exits 2.
//!
//! Whether a key changes on reload is [`RESTART_ONLY`]'s business: a key not
//! in it is live.

use std::collections::HashSet;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use bytesize::ByteSize;
use clap::{ArgMatches, Args, FromArgMatches};
use http::HeaderName;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::admin::AdminSettings;
use crate::discovery::DiscoveryConfig;
use crate::discovery::zk_security::{KerberosKeys, ZkSecurity};
use crate::http_proxy::HttpSettings;
use crate::node::{AddressDefaults, LivyNode, NodeList, Origin, Scheme};
use crate::proxy_protocol::{ProxyProtocol, TrustedNetworks};
use crate::tcp_proxy::TcpSettings;

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
    /// The flags themselves could not be parsed (clap's message names the flag).
    #[error("{0}")]
    Flags(String),
}

/// Where the configuration comes from: the file `--config` names, and every
/// key. The binary's command line flattens this; tests and embedders parse
/// it with [`Config::from_args`].
#[derive(Args, Clone, Debug, Default)]
pub struct Source {
    /// TOML file with any of the keys below (flags and env override it).
    #[arg(long, env = "LIVY_PROXY_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,

    /// Every key.
    #[command(flatten)]
    pub keys: Keys,
}

/// Every configuration key, declared once: flag, environment variable and
/// TOML key in one field. `None` (or an empty list) means "not given":
/// the sections below put the defaults in.
#[derive(Args, Clone, Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case", default)]
pub struct Keys {
    // ---- HTTP listener and forwarding (section `http`) ----
    /// Address the HTTP listener binds [default: 0.0.0.0:8998].
    #[arg(long, env = "LIVY_PROXY_LISTEN", value_name = "ADDR")]
    pub listen: Option<SocketAddr>,

    /// How long a request (or JDBC connection) waits for an active server
    /// before 503 [default: 15s].
    #[arg(long, env = "LIVY_PROXY_HOLD_TIMEOUT", value_name = "DURATION")]
    pub hold_timeout: Option<Dur>,

    /// Timeout for connecting to a Livy server [default: 5s].
    #[arg(long, env = "LIVY_PROXY_CONNECT_TIMEOUT", value_name = "DURATION")]
    pub connect_timeout: Option<Dur>,

    /// How long Livy may take to answer a request (session creation and
    /// large uploads are slow) [default: 600s].
    #[arg(long, env = "LIVY_PROXY_UPSTREAM_TIMEOUT", value_name = "DURATION")]
    pub upstream_timeout: Option<Dur>,

    /// How long a client may take to send a request's headers, counted from
    /// the end of its previous response on a kept-alive connection; then the
    /// connection is closed [default: 30s].
    #[arg(
        long,
        env = "LIVY_PROXY_CLIENT_HEADER_TIMEOUT",
        value_name = "DURATION"
    )]
    pub client_header_timeout: Option<Dur>,

    /// Largest request body kept for replay after a stale 307 [default: 1MiB].
    #[arg(long, env = "LIVY_PROXY_MAX_REPLAY_BODY", value_name = "SIZE")]
    pub max_replay_body: Option<Size>,

    /// Longest silence allowed between two pieces of a request body; then
    /// the client gets a 408 [default: 60s].
    #[arg(long, env = "LIVY_PROXY_CLIENT_BODY_TIMEOUT", value_name = "DURATION")]
    pub client_body_timeout: Option<Dur>,

    /// Longest a write to a client may wait for the client to read; then
    /// the connection is closed and its Livy connection let go
    /// [default: 60s].
    #[arg(long, env = "LIVY_PROXY_CLIENT_SEND_TIMEOUT", value_name = "DURATION")]
    pub client_send_timeout: Option<Dur>,

    /// Memory all request bodies held for replay may take together; past it,
    /// bodies are streamed instead [default: 64MiB].
    #[arg(long, env = "LIVY_PROXY_MAX_BUFFERED_BODIES", value_name = "SIZE")]
    pub max_buffered_bodies: Option<Size>,

    /// Most requests streaming their body to Livy at once, out of
    /// max-upstream-connections [default: a quarter of it].
    #[arg(long, env = "LIVY_PROXY_MAX_STREAMING_UPLOADS", value_name = "N")]
    pub max_streaming_uploads: Option<usize>,

    /// Most requests in flight at once on one h2c client connection [default: 100].
    #[arg(long, env = "LIVY_PROXY_H2_MAX_CONCURRENT_STREAMS", value_name = "N")]
    pub h2_max_concurrent_streams: Option<u32>,

    /// Largest header list an h2c client may send with one request [default: 64KiB].
    #[arg(long, env = "LIVY_PROXY_H2_MAX_HEADER_LIST_SIZE", value_name = "SIZE")]
    pub h2_max_header_list_size: Option<Size>,

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
    #[arg(
        long,
        env = "LIVY_PROXY_PROXY_PROTOCOL_TIMEOUT",
        value_name = "DURATION"
    )]
    pub proxy_protocol_timeout: Option<Dur>,

    /// PEM certificate chain (server certificate first): with --tls-key,
    /// the HTTP listener speaks TLS (HTTP/1.1 and HTTP/2 by ALPN) [default:
    /// none, plain HTTP].
    #[arg(long, env = "LIVY_PROXY_TLS_CERT", value_name = "FILE")]
    pub tls_cert: Option<PathBuf>,

    /// PEM private key of --tls-cert (PKCS#8, PKCS#1 or SEC1).
    #[arg(long, env = "LIVY_PROXY_TLS_KEY", value_name = "FILE")]
    pub tls_key: Option<PathBuf>,

    /// PEM CA bundle: client certificates on the HTTP TLS listener are
    /// verified against it (mTLS) [default: none, no client certificates].
    #[arg(long, env = "LIVY_PROXY_TLS_CLIENT_CA", value_name = "FILE")]
    pub tls_client_ca: Option<PathBuf>,

    /// With --tls-client-ca: required (no verified certificate, no
    /// connection) or optional [default: required].
    #[arg(
        long,
        env = "LIVY_PROXY_TLS_CLIENT_AUTH",
        value_name = "required|optional"
    )]
    pub tls_client_auth: Option<ClientAuthKey>,

    /// Header that carries the verified client certificate's subject and
    /// SANs to Livy; any copy a client sends is removed [default: none].
    #[arg(
        long,
        env = "LIVY_PROXY_TLS_CLIENT_IDENTITY_HEADER",
        value_name = "NAME"
    )]
    pub tls_client_identity_header: Option<String>,

    /// A second HTTP listener, speaking TLS (--tls-cert), while --listen
    /// stays plain HTTP [default: none, --listen speaks TLS when
    /// --tls-cert is set].
    #[arg(long, env = "LIVY_PROXY_TLS_LISTEN", value_name = "ADDR")]
    pub tls_listen: Option<SocketAddr>,

    /// Time a client has to finish the TLS handshake, on every TLS
    /// listener [default: 10s].
    #[arg(
        long,
        env = "LIVY_PROXY_TLS_HANDSHAKE_TIMEOUT",
        value_name = "DURATION"
    )]
    pub tls_handshake_timeout: Option<Dur>,

    /// Most TLS handshakes in progress at once, all listeners together; at
    /// the limit, accepting waits [default: 256].
    #[arg(long, env = "LIVY_PROXY_MAX_TLS_HANDSHAKES", value_name = "N")]
    pub max_tls_handshakes: Option<usize>,

    /// Retry-After sent with a 502 or 503 [default: 5s].
    #[arg(long, env = "LIVY_PROXY_RETRY_AFTER", value_name = "DURATION")]
    pub retry_after: Option<Dur>,

    /// Most HTTP connections open to Livy at once; further requests wait for
    /// a free one (within upstream-timeout) [default: 512].
    #[arg(long, env = "LIVY_PROXY_MAX_UPSTREAM_CONNECTIONS", value_name = "N")]
    pub max_upstream_connections: Option<usize>,

    /// Most HTTP requests inside the proxy at once; more get 503 overloaded
    /// [default: 4096].
    #[arg(long, env = "LIVY_PROXY_MAX_REQUESTS_IN_FLIGHT", value_name = "N")]
    pub max_requests_in_flight: Option<usize>,

    /// Most client connections open on the HTTP listener; at the limit,
    /// accepting pauses [default: 10000].
    #[arg(long, env = "LIVY_PROXY_MAX_CLIENT_CONNECTIONS", value_name = "N")]
    pub max_client_connections: Option<usize>,

    // ---- Discovery (section `discovery`) ----
    /// ZooKeeper ensemble as Livy gives it: host:port,host:port[/chroot].
    /// Without it, the --node list is probed instead.
    #[arg(long, env = "LIVY_PROXY_ZOOKEEPER", value_name = "CONNECT")]
    pub zookeeper: Option<String>,

    /// Path of the Curator LeaderLatch the Livy servers join
    /// (Livy: /<livy.server.ha.key-prefix>/leader) [default: /livy_ha/leader].
    #[arg(long, env = "LIVY_PROXY_LEADER_PATH", value_name = "PATH")]
    pub leader_path: Option<String>,

    /// A known Livy server, [ID=]URL, repeatable (in the file also a table
    /// `{ id, url, thrift }`): ID is its participant id in the latch (Livy's
    /// server-ids entry, default: the host name). The list maps ids to
    /// addresses, is probed without ZooKeeper, and is the only set of hosts
    /// a redirect is followed to. Env: comma-separated.
    #[arg(
        long = "node",
        env = "LIVY_PROXY_NODE",
        value_name = "[ID=]URL",
        value_delimiter = ','
    )]
    pub node: Vec<NodeEntry>,

    /// A node's Thrift address when it is not its host with --thrift-port:
    /// ID=HOST:PORT, repeatable. Env: comma-separated.
    #[arg(
        long = "thrift-node",
        env = "LIVY_PROXY_THRIFT_NODE",
        value_name = "ID=HOST:PORT",
        value_delimiter = ','
    )]
    pub thrift_node: Vec<String>,

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

    /// Scheme for a participant id or node given without one: http or https
    /// [default: http].
    #[arg(long, env = "LIVY_PROXY_DEFAULT_SCHEME", value_name = "SCHEME")]
    pub default_scheme: Option<String>,

    /// Port for a participant id or node given without one [default: 8998].
    #[arg(long, env = "LIVY_PROXY_DEFAULT_PORT", value_name = "PORT")]
    pub default_port: Option<u16>,

    /// ZooKeeper session timeout the proxy asks for [default: 10s].
    #[arg(long, env = "LIVY_PROXY_ZK_SESSION_TIMEOUT", value_name = "DURATION")]
    pub zk_session_timeout: Option<Dur>,

    /// PEM CA bundle for ZooKeeper's secureClientPort: set, every host of
    /// --zookeeper is reached over TLS [default: none, plain TCP].
    #[arg(long, env = "LIVY_PROXY_ZK_TLS_CA", value_name = "FILE")]
    pub zk_tls_ca: Option<PathBuf>,

    /// PEM client certificate chain for ZooKeeper TLS (ssl.clientAuth=need).
    #[arg(long, env = "LIVY_PROXY_ZK_TLS_CERT", value_name = "FILE")]
    pub zk_tls_cert: Option<PathBuf>,

    /// PEM private key of --zk-tls-cert.
    #[arg(long, env = "LIVY_PROXY_ZK_TLS_KEY", value_name = "FILE")]
    pub zk_tls_key: Option<PathBuf>,

    /// SASL DIGEST-MD5 user for ZooKeeper (the JAAS user_<name> entry).
    #[arg(long, env = "LIVY_PROXY_ZK_SASL_USER", value_name = "USER")]
    pub zk_sasl_user: Option<String>,

    /// File holding the --zk-sasl-user password (never the password itself
    /// on a command line).
    #[arg(long, env = "LIVY_PROXY_ZK_SASL_PASSWORD_FILE", value_name = "FILE")]
    pub zk_sasl_password_file: Option<PathBuf>,

    /// SASL mechanism for ZooKeeper: digest-md5 or gssapi (Kerberos)
    /// [default: gssapi when a zk-kerberos-* key is set, digest-md5 when
    /// zk-sasl-user is, else no SASL].
    #[arg(long, env = "LIVY_PROXY_ZK_SASL_MECHANISM", value_name = "MECHANISM")]
    pub zk_sasl_mechanism: Option<String>,

    /// Kerberos client principal for ZooKeeper, e.g.
    /// livy-proxy/host@REALM [default: the credential cache's, else the
    /// keytab's first].
    #[arg(
        long,
        env = "LIVY_PROXY_ZK_KERBEROS_PRINCIPAL",
        value_name = "PRINCIPAL"
    )]
    pub zk_kerberos_principal: Option<String>,

    /// Keytab holding --zk-kerberos-principal's keys: tickets are got and
    /// renewed from it, no kinit [default: the process's credential cache].
    #[arg(long, env = "LIVY_PROXY_ZK_KERBEROS_KEYTAB", value_name = "FILE")]
    pub zk_kerberos_keytab: Option<PathBuf>,

    /// First part of ZooKeeper's service principal (Java's
    /// zookeeper.sasl.client.username) [default: zookeeper].
    #[arg(long, env = "LIVY_PROXY_ZK_KERBEROS_SERVICE", value_name = "NAME")]
    pub zk_kerberos_service: Option<String>,

    /// Host part of ZooKeeper's service principal, for every server
    /// [default: each host of --zookeeper].
    #[arg(long, env = "LIVY_PROXY_ZK_KERBEROS_SERVER_HOST", value_name = "HOST")]
    pub zk_kerberos_server_host: Option<String>,

    /// How often the static node list is probed [default: 2s].
    #[arg(long, env = "LIVY_PROXY_PROBE_INTERVAL", value_name = "DURATION")]
    pub probe_interval: Option<Dur>,

    /// How long one probe may take [default: 1s].
    #[arg(long, env = "LIVY_PROXY_PROBE_TIMEOUT", value_name = "DURATION")]
    pub probe_timeout: Option<Dur>,

    /// GET used to probe a server without /ha-status: 307 = passive, 2xx =
    /// active [default: /version].
    #[arg(long, env = "LIVY_PROXY_PROBE_PATH", value_name = "PATH")]
    pub probe_path: Option<String>,

    // ---- JDBC listener (section `tcp`) ----
    /// Address of the JDBC (Livy Thrift server, binary transport) TCP
    /// listener; unset: no JDBC listener.
    #[arg(long, env = "LIVY_PROXY_THRIFT_LISTEN", value_name = "ADDR")]
    pub thrift_listen: Option<SocketAddr>,

    /// Livy servers' Thrift port (livy.server.thrift.port) [default: 10090].
    #[arg(long, env = "LIVY_PROXY_THRIFT_PORT", value_name = "PORT")]
    pub thrift_port: Option<u16>,

    /// What happens to JDBC connections to the old leader when the leader
    /// changes: close (the client sees an error at once) or keep [default: close].
    #[arg(long, env = "LIVY_PROXY_THRIFT_ON_FAILOVER", value_name = "close|keep")]
    pub thrift_on_failover: Option<OnFailover>,

    /// TCP_NODELAY on JDBC connections, both sides [default: true].
    #[arg(long, env = "LIVY_PROXY_TCP_NODELAY", value_name = "BOOL")]
    pub tcp_nodelay: Option<bool>,

    /// TCP keepalive idle time on JDBC connections, or off [default: 60s].
    #[arg(long, env = "LIVY_PROXY_TCP_KEEPALIVE", value_name = "DURATION|off")]
    pub tcp_keepalive: Option<OrOff<Dur>>,

    /// Close a JDBC connection with no bytes either way for this long, or
    /// off (JDBC sessions idle for long) [default: off].
    #[arg(long, env = "LIVY_PROXY_TCP_IDLE_TIMEOUT", value_name = "DURATION|off")]
    pub tcp_idle_timeout: Option<OrOff<Dur>>,

    /// Most JDBC connections open at once; more are closed at accept, with a
    /// log line [default: 10000].
    #[arg(long, env = "LIVY_PROXY_MAX_TCP_CONNECTIONS", value_name = "N")]
    pub max_tcp_connections: Option<usize>,

    /// PEM certificate chain of the JDBC listener: with --thrift-tls-key,
    /// it terminates TLS [default: none, bytes relayed as they come].
    #[arg(long, env = "LIVY_PROXY_THRIFT_TLS_CERT", value_name = "FILE")]
    pub thrift_tls_cert: Option<PathBuf>,

    /// PEM private key of --thrift-tls-cert.
    #[arg(long, env = "LIVY_PROXY_THRIFT_TLS_KEY", value_name = "FILE")]
    pub thrift_tls_key: Option<PathBuf>,

    /// PEM CA bundle for client certificates on the JDBC listener.
    #[arg(long, env = "LIVY_PROXY_THRIFT_TLS_CLIENT_CA", value_name = "FILE")]
    pub thrift_tls_client_ca: Option<PathBuf>,

    /// With --thrift-tls-client-ca: required or optional [default: required].
    #[arg(
        long,
        env = "LIVY_PROXY_THRIFT_TLS_CLIENT_AUTH",
        value_name = "required|optional"
    )]
    pub thrift_tls_client_auth: Option<ClientAuthKey>,

    /// JDBC and TLS: passthrough (bytes relayed, TLS end to end), terminate
    /// (TLS on the listener, plain to Livy) or reencrypt (TLS on the
    /// listener and to Livy) [default: terminate with --thrift-tls-cert,
    /// else passthrough].
    #[arg(long, env = "LIVY_PROXY_THRIFT_TLS_MODE", value_name = "MODE")]
    pub thrift_tls_mode: Option<ThriftTlsModeKey>,

    /// PEM CA certificates trusted for Livy's Thrift port with
    /// --thrift-tls-mode reencrypt, besides the system's roots [default:
    /// --upstream-ca].
    #[arg(long, env = "LIVY_PROXY_THRIFT_UPSTREAM_CA", value_name = "FILE")]
    pub thrift_upstream_ca: Option<PathBuf>,

    /// PEM certificate chain sent to Livy's Thrift port when it asks, with
    /// reencrypt; with --thrift-upstream-client-key [default:
    /// --upstream-client-cert and --upstream-client-key].
    #[arg(
        long,
        env = "LIVY_PROXY_THRIFT_UPSTREAM_CLIENT_CERT",
        value_name = "FILE"
    )]
    pub thrift_upstream_client_cert: Option<PathBuf>,

    /// PEM private key of --thrift-upstream-client-cert.
    #[arg(
        long,
        env = "LIVY_PROXY_THRIFT_UPSTREAM_CLIENT_KEY",
        value_name = "FILE"
    )]
    pub thrift_upstream_client_key: Option<PathBuf>,

    /// The name Livy's Thrift certificates are checked against, with
    /// reencrypt [default: --upstream-server-name, else each node's Thrift
    /// host].
    #[arg(
        long,
        env = "LIVY_PROXY_THRIFT_UPSTREAM_SERVER_NAME",
        value_name = "NAME"
    )]
    pub thrift_upstream_server_name: Option<String>,

    // ---- Admin listener (section `admin`) ----
    /// Address of the admin listener (/healthz, /readyz, /status, /metrics),
    /// or `off` [default: 127.0.0.1:9998].
    #[arg(long, env = "LIVY_PROXY_ADMIN_LISTEN", value_name = "ADDR|off")]
    pub admin_listen: Option<OrOff<SocketAddr>>,

    /// /readyz also requires a fresh view (ZooKeeper connected, probes
    /// answering) [default: false].
    #[arg(long, env = "LIVY_PROXY_READY_REQUIRES_FRESH", value_name = "BOOL")]
    pub ready_requires_fresh: Option<bool>,

    /// PEM certificate chain of the admin listener: with --admin-tls-key,
    /// it speaks HTTPS [default: none].
    #[arg(long, env = "LIVY_PROXY_ADMIN_TLS_CERT", value_name = "FILE")]
    pub admin_tls_cert: Option<PathBuf>,

    /// PEM private key of --admin-tls-cert.
    #[arg(long, env = "LIVY_PROXY_ADMIN_TLS_KEY", value_name = "FILE")]
    pub admin_tls_key: Option<PathBuf>,

    /// PEM CA bundle for client certificates on the admin listener.
    #[arg(long, env = "LIVY_PROXY_ADMIN_TLS_CLIENT_CA", value_name = "FILE")]
    pub admin_tls_client_ca: Option<PathBuf>,

    /// With --admin-tls-client-ca: required or optional [default: required].
    #[arg(
        long,
        env = "LIVY_PROXY_ADMIN_TLS_CLIENT_AUTH",
        value_name = "required|optional"
    )]
    pub admin_tls_client_auth: Option<ClientAuthKey>,

    // ---- Logging (section `log`) ----
    /// Log filter when RUST_LOG is unset, e.g. info or livy_proxy=debug [default: info].
    #[arg(long, env = "LIVY_PROXY_LOG_LEVEL", value_name = "FILTER")]
    pub log_level: Option<String>,

    /// Log line format: text or json [default: text].
    #[arg(long, env = "LIVY_PROXY_LOG_FORMAT", value_name = "FORMAT")]
    pub log_format: Option<LogFormat>,

    /// One INFO line per HTTP request and JDBC connection, target `access`
    /// [default: true].
    #[arg(long, env = "LIVY_PROXY_ACCESS_LOG", value_name = "BOOL")]
    pub access_log: Option<bool>,

    // ---- The process (section `runtime`; the TLS handshake bounds are
    // shared by every listener) ----
    /// Runtime worker threads [default: one per CPU core].
    #[arg(long, env = "LIVY_PROXY_WORKER_THREADS", value_name = "N")]
    pub worker_threads: Option<usize>,

    /// On SIGTERM, keep accepting this long after /readyz turns 503, so load
    /// balancers deregister the proxy first [default: 0s].
    #[arg(long, env = "LIVY_PROXY_SHUTDOWN_DELAY", value_name = "DURATION")]
    pub shutdown_delay: Option<Dur>,

    /// On SIGTERM, how long requests in flight may take to finish once
    /// accepting has stopped [default: 25s].
    #[arg(
        long,
        env = "LIVY_PROXY_SHUTDOWN_GRACE_PERIOD",
        value_name = "DURATION"
    )]
    pub shutdown_grace_period: Option<Dur>,
}

/// The keys a reload leaves alone (named in one WARN line when the new file
/// changes them): listeners, sockets and pools sized at start, discovery's
/// session. Every other key is live: it applies to the next request or
/// connection after a SIGHUP.
pub const RESTART_ONLY: &[&str] = &[
    "listen",
    "thrift-listen",
    "admin-listen",
    "zookeeper",
    "leader-path",
    "default-scheme",
    "default-port",
    "zk-session-timeout",
    "zk-tls-ca",
    "zk-tls-cert",
    "zk-tls-key",
    "zk-sasl-user",
    "zk-sasl-password-file",
    "zk-sasl-mechanism",
    "zk-kerberos-principal",
    "zk-kerberos-keytab",
    "zk-kerberos-service",
    "zk-kerberos-server-host",
    "probe-interval",
    "probe-timeout",
    "probe-path",
    "connect-timeout",
    "client-header-timeout",
    "client-body-timeout",
    "client-send-timeout",
    "max-replay-body",
    "max-buffered-bodies",
    "max-streaming-uploads",
    "max-upstream-connections",
    "h2-max-concurrent-streams",
    "h2-max-header-list-size",
    "log-format",
    "worker-threads",
    "thrift-port",
    "thrift-on-failover",
    "tcp-nodelay",
    "tcp-keepalive",
    "tcp-idle-timeout",
    "max-tcp-connections",
    "ready-requires-fresh",
    "tls-cert",
    "tls-key",
    "tls-client-ca",
    "tls-client-auth",
    "tls-listen",
    "tls-handshake-timeout",
    "max-tls-handshakes",
    "admin-tls-cert",
    "admin-tls-key",
    "admin-tls-client-ca",
    "admin-tls-client-auth",
    "thrift-tls-cert",
    "thrift-tls-key",
    "thrift-tls-client-ca",
    "thrift-tls-client-auth",
    "thrift-tls-mode",
    "thrift-upstream-ca",
    "thrift-upstream-client-cert",
    "thrift-upstream-client-key",
    "thrift-upstream-server-name",
    "upstream-ca",
    "upstream-client-cert",
    "upstream-client-key",
    "upstream-server-name",
];

/// A duration as humans write it (`15s`, `500ms`, `1m 30s`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Dur(pub Duration);

impl FromStr for Dur {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        humantime::parse_duration(s.trim())
            .map(Dur)
            .map_err(|e| format!("{s:?} is not a duration like 15s or 500ms: {e}"))
    }
}

impl fmt::Display for Dur {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        humantime::format_duration(self.0).fmt(f)
    }
}

/// A size as humans write it (`64KiB`, `1MiB`) or a number of bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Size(pub u64);

impl FromStr for Size {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        s.trim()
            .parse::<ByteSize>()
            .map(|b| Size(b.as_u64()))
            .map_err(|e| format!("{s:?} is not a size like 64KiB or 1MiB: {e}"))
    }
}

impl fmt::Display for Size {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// A value that may be switched off with `off` (or `0`; for a duration,
/// any zero one).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OrOff<T> {
    /// The value.
    On(T),
    /// `off`.
    Off,
}

impl FromStr for OrOff<Dur> {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.trim() {
            "off" | "0" => Ok(OrOff::Off),
            t => match t.parse::<Dur>() {
                // `0s` means what `0` does (HAProxy's `timeout 0` too): a
                // zero idle timeout would close every connection at once.
                Ok(d) if d.0.is_zero() => Ok(OrOff::Off),
                Ok(d) => Ok(OrOff::On(d)),
                Err(e) => Err(format!("{e} (or off)")),
            },
        }
    }
}

impl<T: fmt::Display> fmt::Display for OrOff<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            OrOff::On(v) => v.fmt(f),
            OrOff::Off => f.write_str("off"),
        }
    }
}

impl<T> OrOff<T> {
    fn on(self) -> Option<T> {
        match self {
            OrOff::On(v) => Some(v),
            OrOff::Off => None,
        }
    }
}

/// What JDBC connections to an old leader do on failover.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum OnFailover {
    /// Closed at once: the client sees an error and reconnects.
    Close,
    /// Left to the old leader until they end.
    Keep,
}

/// `*tls-client-auth`: whether a client certificate is demanded.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ClientAuthKey {
    /// No verified certificate, no connection.
    Required,
    /// A certificate is verified when sent.
    Optional,
}

/// `thrift-tls-mode`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ThriftTlsModeKey {
    /// Bytes relayed, TLS end to end.
    Passthrough,
    /// TLS ends on the listener, plain TCP to Livy.
    Terminate,
    /// TLS on the listener and to Livy.
    Reencrypt,
}

/// How log lines are written.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// One `node` entry: `"[ID=]URL"` (flag, env or file) or, in the file,
/// `{ id, url, thrift }`.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(untagged)]
pub enum NodeEntry {
    /// `[ID=]URL`.
    Spec(String),
    /// `{ id, url, thrift }`.
    Table(NodeTable),
}

/// A node written as a TOML table.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct NodeTable {
    /// Its participant id (default: the URL's host).
    pub id: Option<String>,
    /// Its REST URL.
    pub url: String,
    /// Its Thrift address, `HOST:PORT`.
    pub thrift: Option<String>,
}

impl FromStr for NodeEntry {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Ok(NodeEntry::Spec(s.trim().to_string()))
    }
}

/// Values written as strings both in TOML and on the command line.
macro_rules! as_string {
    ($($t:ty),*) => {$(
        impl Serialize for $t {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.collect_str(self)
            }
        }
        impl<'de> Deserialize<'de> for $t {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let text = StringOrNumber::deserialize(d)?;
                text.0.parse().map_err(serde::de::Error::custom)
            }
        }
    )*};
}
as_string!(Dur, Size, OrOff<Dur>, OrOff<SocketAddr>);

/// A TOML value given as a string, or as a number (`max-replay-body =
/// 1048576`, `tcp-keepalive = 0`) read as its digits.
struct StringOrNumber(String);

impl<'de> Deserialize<'de> for StringOrNumber {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Either {
            S(String),
            N(u64),
        }
        match Either::deserialize(d) {
            Ok(Either::S(s)) => Ok(StringOrNumber(s)),
            Ok(Either::N(n)) => Ok(StringOrNumber(n.to_string())),
            Err(_) => Err(serde::de::Error::custom("expected a string")),
        }
    }
}

impl FromStr for OrOff<SocketAddr> {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.trim() {
            "off" => Ok(OrOff::Off),
            t => t
                .parse()
                .map(OrOff::On)
                .map_err(|e| format!("{t:?}: {e} (or off)")),
        }
    }
}

/// The resolved configuration the proxy runs with, in its sections.
#[derive(Clone, Debug)]
pub struct Config {
    /// The keys as given (file with flags over it), for a reload to compare.
    pub keys: Keys,
    /// The HTTP listener and forwarding.
    pub http: HttpSettings,
    /// The JDBC listener.
    pub tcp: TcpSettings,
    /// Discovery: ZooKeeper or the probed node list.
    pub discovery: DiscoveryConfig,
    /// The admin listener.
    pub admin: AdminSettings,
    /// Logging.
    pub log: LogSettings,
    /// The process: threads and the drain.
    pub runtime: RuntimeSettings,
}

/// Section `log`.
#[derive(Clone, Debug)]
pub struct LogSettings {
    /// The `tracing` filter when `RUST_LOG` is unset (live).
    pub level: String,
    /// Lines as JSON objects instead of text.
    pub json: bool,
    /// Whether access-log lines are written (live).
    pub access_log: bool,
}

/// Section `runtime`.
#[derive(Clone, Debug)]
pub struct RuntimeSettings {
    /// Runtime worker threads; `None` means one per core.
    pub worker_threads: Option<usize>,
    /// Time between readiness going 503 and accepting stopping.
    pub shutdown_delay: Duration,
    /// Time requests in flight get to finish in a drain.
    pub shutdown_grace_period: Duration,
    /// Time a TLS handshake may take, on every listener.
    pub tls_handshake_timeout: Duration,
    /// Most TLS handshakes at once, all listeners together.
    pub max_tls_handshakes: usize,
}

impl Config {
    /// The configuration from `args` (program name first), laid over the
    /// file `--config` names, exactly as the binary reads it.
    pub fn from_args<I, T>(args: I) -> Result<Config, ConfigError>
    where
        I: IntoIterator<Item = T>,
        T: Into<std::ffi::OsString> + Clone,
    {
        let command = Source::augment_args(clap::Command::new("livy-proxy"));
        let matches = command
            .try_get_matches_from(args)
            .map_err(|e| ConfigError::Flags(first_line(&e)))?;
        let source =
            Source::from_arg_matches(&matches).map_err(|e| ConfigError::Flags(first_line(&e)))?;
        Config::load(source.config.as_deref(), &matches)
    }

    /// The file at `file` (if any) with the flags in `flags` laid over it:
    /// `flags` are the matches of a command that includes [`Source`]'s (or
    /// [`Keys`]') arguments.
    pub fn load(file: Option<&Path>, flags: &ArgMatches) -> Result<Config, ConfigError> {
        let keys = Config::keys(file, flags)?;
        let given = given_flags(flags);
        let origin = file
            .map(|p| format!("config file {}: ", p.display()))
            .unwrap_or_default();
        Build {
            keys: &keys,
            given: &given,
            origin: &origin,
        }
        .config()
    }

    /// The keys alone, as [`Config::load`] reads them (file, then flags and
    /// environment), without building the sections: for `livy-proxy
    /// health`, which needs the admin listener's and reads no other file.
    pub fn keys(file: Option<&Path>, flags: &ArgMatches) -> Result<Keys, ConfigError> {
        let mut keys = match file {
            Some(path) => read_file(path)?,
            None => Keys::default(),
        };
        keys.update_from_arg_matches(flags)
            .map_err(|e| ConfigError::Flags(first_line(&e)))?;
        Ok(keys)
    }

    /// Builds the sections from `keys` that were already loaded once (a
    /// reload keeping its restart-only values): errors name no file.
    pub fn from_keys(keys: &Keys) -> Result<Config, ConfigError> {
        Build {
            keys,
            given: &HashSet::new(),
            origin: "",
        }
        .config()
    }
}

/// The restart-only keys whose values differ between `running` and `new`.
pub fn restart_only_changes(running: &Keys, new: &Keys) -> Vec<&'static str> {
    let (a, b) = (key_values(running), key_values(new));
    RESTART_ONLY
        .iter()
        .copied()
        .filter(|k| a.get(*k) != b.get(*k))
        .collect()
}

/// `new` with every restart-only key set back to `running`'s value.
pub fn keep_restart_only(running: &Keys, new: &Keys) -> Keys {
    let a = key_values(running);
    let mut b = key_values(new);
    for key in RESTART_ONLY {
        match a.get(*key) {
            Some(v) => b.insert(key.to_string(), v.clone()),
            None => b.remove(*key),
        };
    }
    // Both maps came from `Keys` and go back into one: this cannot fail,
    // and if it did, nothing of the new file would be the safe answer.
    serde_json::from_value(serde_json::Value::Object(b)).unwrap_or_else(|_| running.clone())
}

/// Each key's value by its TOML name (absent when not given).
fn key_values(keys: &Keys) -> serde_json::Map<String, serde_json::Value> {
    match serde_json::to_value(keys) {
        Ok(serde_json::Value::Object(map)) => map
            .into_iter()
            .filter(|(_, v)| !v.is_null() && v.as_array().is_none_or(|a| !a.is_empty()))
            .collect(),
        _ => serde_json::Map::new(),
    }
}

/// The keys given as flags or environment variables (TOML spelling).
fn given_flags(flags: &ArgMatches) -> HashSet<String> {
    flags
        .ids()
        .filter(|id| {
            matches!(
                flags.value_source(id.as_str()),
                Some(
                    clap::parser::ValueSource::CommandLine | clap::parser::ValueSource::EnvVariable
                )
            )
        })
        .map(|id| id.as_str().replace('_', "-"))
        .collect()
}

fn first_line(e: &clap::Error) -> String {
    let text = e.to_string();
    text.lines()
        .next()
        .unwrap_or("invalid arguments")
        .trim_start_matches("error: ")
        .to_string()
}

/// Builds the sections from merged keys, naming the file in an error about
/// a key that came from it.
struct Build<'a> {
    keys: &'a Keys,
    given: &'a HashSet<String>,
    origin: &'a str,
}

impl Build<'_> {
    /// `config file F, ` when the file set `key` (flags did not), else empty.
    fn origin_of(&self, key: &str) -> String {
        let top = key.split('.').next().unwrap_or(key);
        if self.given.contains(top) {
            String::new()
        } else {
            self.origin.to_string()
        }
    }

    /// The error for `key`, with the file named when the file set it.
    fn invalid(&self, key: &str, problem: impl ToString) -> ConfigError {
        ConfigError::Invalid {
            origin: self.origin_of(key),
            key: key.to_string(),
            problem: problem.to_string(),
        }
    }

    /// `log-level`, checked as tracing reads it: `EnvFilter` would skip a
    /// directive it cannot parse and, with none left, log errors only, so
    /// a typo would silence warnings and access lines without a word.
    fn log_level(&self, value: Option<&str>) -> Result<String, ConfigError> {
        let level = value.unwrap_or("info");
        tracing_subscriber::EnvFilter::try_new(level)
            .map_err(|e| self.invalid("log-level", format!("{level:?}: {e}")))?;
        Ok(level.to_string())
    }

    /// A duration key: its value or default, refused when zero unless allowed.
    fn duration(
        &self,
        key: &str,
        value: Option<Dur>,
        default: Duration,
    ) -> Result<Duration, ConfigError> {
        let d = value.map_or(default, |d| d.0);
        if d.is_zero() {
            return Err(self.invalid(key, "must be greater than zero"));
        }
        Ok(d)
    }

    /// A count key: its value or default, at least 1.
    fn count(&self, key: &str, value: Option<usize>, default: usize) -> Result<usize, ConfigError> {
        match value.unwrap_or(default) {
            0 => Err(self.invalid(key, "must be at least 1")),
            n => Ok(n),
        }
    }

    fn config(&self) -> Result<Config, ConfigError> {
        let discovery = self.discovery()?;
        let http = self.http()?;
        let tcp = self.tcp(&http)?;
        let k = self.keys;
        Ok(Config {
            keys: k.clone(),
            http,
            tcp,
            discovery,
            admin: AdminSettings {
                listen: match k.admin_listen {
                    Some(a) => a.on(),
                    None => Some(SocketAddr::from(([127, 0, 0, 1], 9998))),
                },
                tls: self.tls_spec(
                    "admin-",
                    &k.admin_tls_cert,
                    &k.admin_tls_key,
                    &k.admin_tls_client_ca,
                    k.admin_tls_client_auth,
                )?,
                ready_requires_fresh: k.ready_requires_fresh.unwrap_or(false),
            },
            log: LogSettings {
                level: self.log_level(k.log_level.as_deref())?,
                json: k.log_format == Some(LogFormat::Json),
                access_log: k.access_log.unwrap_or(true),
            },
            runtime: RuntimeSettings {
                worker_threads: match k.worker_threads {
                    Some(0) => return Err(self.invalid("worker-threads", "must be at least 1")),
                    n => n,
                },
                shutdown_delay: k.shutdown_delay.map_or(Duration::ZERO, |d| d.0),
                shutdown_grace_period: k
                    .shutdown_grace_period
                    .map_or(Duration::from_secs(25), |d| d.0),
                tls_handshake_timeout: self.duration(
                    "tls-handshake-timeout",
                    k.tls_handshake_timeout,
                    Duration::from_secs(10),
                )?,
                max_tls_handshakes: self.count("max-tls-handshakes", k.max_tls_handshakes, 256)?,
            },
        })
    }

    fn discovery(&self) -> Result<DiscoveryConfig, ConfigError> {
        let k = self.keys;
        let scheme = match k
            .default_scheme
            .as_deref()
            .map(str::to_ascii_lowercase)
            .as_deref()
        {
            None | Some("http") => Scheme::Http,
            Some("https") => Scheme::Https,
            Some(s) => {
                return Err(
                    self.invalid("default-scheme", format!("{s:?} is neither http nor https"))
                );
            }
        };
        let defaults = AddressDefaults {
            scheme,
            port: k.default_port.unwrap_or(8998),
        };
        if let Some(zk) = &k.zookeeper {
            check_zookeeper(zk).map_err(|p| self.invalid("zookeeper", p))?;
        }
        let leader_path = k
            .leader_path
            .clone()
            .unwrap_or_else(|| "/livy_ha/leader".to_string());
        if !leader_path.starts_with('/') || (leader_path.len() > 1 && leader_path.ends_with('/')) {
            return Err(self.invalid(
                "leader-path",
                format!("{leader_path:?} must be an absolute ZooKeeper path like /livy_ha/leader"),
            ));
        }
        let mut nodes = k
            .node
            .iter()
            .map(|e| self.node(e, defaults))
            .collect::<Result<Vec<_>, _>>()?;
        for spec in &k.thrift_node {
            let Some((id, addr)) = spec.split_once('=') else {
                return Err(self.invalid("thrift-node", format!("{spec:?} is not ID=HOST:PORT")));
            };
            check_host_port(addr).map_err(|p| self.invalid("thrift-node", p))?;
            let Some(node) = nodes.iter_mut().find(|n| n.id == id) else {
                return Err(
                    self.invalid("thrift-node", format!("{id:?} is not the id of any node"))
                );
            };
            node.thrift = Some(addr.to_string());
        }
        for node in &nodes {
            if let Some(addr) = &node.thrift {
                check_host_port(addr).map_err(|p| self.invalid("node.thrift", p))?;
            }
        }
        self.check_unique(&nodes)?;
        if k.zookeeper.is_none() && nodes.is_empty() {
            return Err(self.invalid(
                "zookeeper",
                "neither zookeeper nor any node is set: nothing to discover the active Livy server from",
            ));
        }
        let zk_security = ZkSecurity::from_keys(
            k.zk_tls_ca.clone(),
            k.zk_tls_cert.clone(),
            k.zk_tls_key.clone(),
            k.zk_sasl_user.clone(),
            k.zk_sasl_password_file.clone(),
        )
        .and_then(|s| {
            s.with_mechanism(KerberosKeys {
                mechanism: k.zk_sasl_mechanism.clone(),
                principal: k.zk_kerberos_principal.clone(),
                keytab: k.zk_kerberos_keytab.clone(),
                service: k.zk_kerberos_service.clone(),
                server_host: k.zk_kerberos_server_host.clone(),
            })
        })
        .and_then(|s| s.check().map(|()| s))
        .map_err(|e| self.invalid(e.key, e.problem))?;
        if k.zookeeper.is_none() && zk_security != ZkSecurity::default() {
            let key = if zk_security.tls() {
                "zk-tls-ca"
            } else if let Some(k) = &zk_security.kerberos {
                if k.keytab.is_some() {
                    "zk-kerberos-keytab"
                } else if k.principal.is_some() {
                    "zk-kerberos-principal"
                } else {
                    "zk-sasl-mechanism"
                }
            } else {
                "zk-sasl-user"
            };
            return Err(self.invalid(key, "set without zookeeper"));
        }
        let probe_path = k
            .probe_path
            .clone()
            .unwrap_or_else(|| "/version".to_string());
        if !probe_path.starts_with('/') {
            return Err(self.invalid("probe-path", format!("{probe_path:?} must start with /")));
        }
        Ok(DiscoveryConfig {
            zookeeper: k.zookeeper.clone(),
            leader_path,
            zk_session_timeout: self.duration(
                "zk-session-timeout",
                k.zk_session_timeout,
                Duration::from_secs(10),
            )?,
            zk_security,
            upstream_tls: Some(Arc::new(
                crate::tls::client::upstream_tls(&crate::tls::client::UpstreamTlsSpec {
                    ca: k.upstream_ca.clone(),
                    client_cert: k.upstream_client_cert.clone(),
                    client_key: k.upstream_client_key.clone(),
                    server_name: k.upstream_server_name.clone(),
                    ..Default::default()
                })
                .map_err(|e| self.invalid(&e.key, e.problem))?,
            )),
            nodes: NodeList::from(Arc::new(nodes)),
            defaults,
            probe_interval: self.duration(
                "probe-interval",
                k.probe_interval,
                Duration::from_secs(2),
            )?,
            probe_timeout: self.duration(
                "probe-timeout",
                k.probe_timeout,
                Duration::from_secs(1),
            )?,
            probe_path,
        })
    }

    fn node(&self, entry: &NodeEntry, defaults: AddressDefaults) -> Result<LivyNode, ConfigError> {
        match entry {
            NodeEntry::Spec(s) => LivyNode::parse(s, defaults).map_err(|e| self.invalid("node", e)),
            NodeEntry::Table(t) => {
                let origin =
                    Origin::parse(&t.url, defaults).map_err(|e| self.invalid("node.url", e))?;
                Ok(LivyNode {
                    id: t.id.clone().unwrap_or_else(|| origin.host.clone()),
                    origin,
                    thrift: t.thrift.clone(),
                })
            }
        }
    }

    fn check_unique(&self, nodes: &[LivyNode]) -> Result<(), ConfigError> {
        for (i, a) in nodes.iter().enumerate() {
            for b in &nodes[..i] {
                if a.id == b.id {
                    return Err(self.invalid("node", format!("id {:?} is given twice", a.id)));
                }
                if a.origin == b.origin {
                    return Err(self.invalid("node", format!("{} is given twice", a.origin)));
                }
            }
        }
        Ok(())
    }

    fn proxy_protocol(&self) -> Result<ProxyProtocol, ConfigError> {
        let k = self.keys;
        Ok(ProxyProtocol {
            from: TrustedNetworks::parse(&k.proxy_protocol_from)
                .map_err(|e| self.invalid("proxy-protocol-from", e))?,
            timeout: self.duration(
                "proxy-protocol-timeout",
                k.proxy_protocol_timeout,
                crate::proxy_protocol::DEFAULT_TIMEOUT,
            )?,
        })
    }

    fn http(&self) -> Result<HttpSettings, ConfigError> {
        let k = self.keys;
        let max_replay_body = k.max_replay_body.map_or(1024 * 1024, |s| s.0);
        let max_buffered_bodies = k.max_buffered_bodies.map_or(64 * 1024 * 1024, |s| s.0);
        if max_replay_body > max_buffered_bodies {
            return Err(self.invalid(
                "max-replay-body",
                format!(
                    "{} is more than max-buffered-bodies ({}): no body that large could be buffered",
                    ByteSize(max_replay_body),
                    ByteSize(max_buffered_bodies)
                ),
            ));
        }
        let h2_max_header_list_size = k
            .h2_max_header_list_size
            .map_or(Some(64 * 1024), |s| u32::try_from(s.0).ok())
            .filter(|n| *n > 0)
            .ok_or_else(|| self.invalid("h2-max-header-list-size", "must be between 1 and 4GiB"))?;
        let max_upstream_connections =
            self.count("max-upstream-connections", k.max_upstream_connections, 512)?;
        // A quarter: uploads that trickle in hold at most that share of
        // Livy's connections, the rest stay for everything else.
        let max_streaming_uploads = self.count(
            "max-streaming-uploads",
            k.max_streaming_uploads,
            (max_upstream_connections / 4).max(1),
        )?;
        if max_streaming_uploads > max_upstream_connections {
            return Err(self.invalid(
                "max-streaming-uploads",
                format!(
                    "{max_streaming_uploads} is more than max-upstream-connections ({max_upstream_connections})"
                ),
            ));
        }
        let strip_headers =
            header_names(&k.strip_headers).map_err(|p| self.invalid("strip-headers", p))?;
        let public_url = match &k.public_url {
            Some(u) => Some(public_origin(u).map_err(|p| self.invalid("public-url", p))?),
            None => None,
        };
        let tls = self.tls_spec(
            "",
            &k.tls_cert,
            &k.tls_key,
            &k.tls_client_ca,
            k.tls_client_auth,
        )?;
        if k.tls_listen.is_some() && tls.is_none() {
            return Err(self.invalid(
                "tls-listen",
                "set without tls-cert and tls-key (the TLS listener needs them)",
            ));
        }
        let client_identity_header = match &k.tls_client_identity_header {
            Some(h) => Some(
                header_names(std::slice::from_ref(h))
                    .map_err(|p| self.invalid("tls-client-identity-header", p))?
                    .remove(0),
            ),
            None => None,
        };
        Ok(HttpSettings {
            listen: k.listen.unwrap_or(SocketAddr::from(([0, 0, 0, 0], 8998))),
            hold_timeout: k.hold_timeout.map_or(Duration::from_secs(15), |d| d.0),
            upstream_timeout: self.duration(
                "upstream-timeout",
                k.upstream_timeout,
                Duration::from_secs(600),
            )?,
            client_header_timeout: self.duration(
                "client-header-timeout",
                k.client_header_timeout,
                Duration::from_secs(30),
            )?,
            connect_timeout: self.duration(
                "connect-timeout",
                k.connect_timeout,
                Duration::from_secs(5),
            )?,
            max_replay_body,
            trust_forwarded: k.trust_forwarded.unwrap_or(false),
            strip_headers,
            emit_forwarded: k.emit_forwarded.unwrap_or(false),
            public_url,
            retry_after: k.retry_after.map_or(Duration::from_secs(5), |d| d.0),
            max_upstream_connections,
            client_body_timeout: self.duration(
                "client-body-timeout",
                k.client_body_timeout,
                Duration::from_secs(60),
            )?,
            client_send_timeout: self.duration(
                "client-send-timeout",
                k.client_send_timeout,
                Duration::from_secs(60),
            )?,
            max_buffered_bodies,
            max_streaming_uploads,
            h2_max_concurrent_streams: match k.h2_max_concurrent_streams.unwrap_or(100) {
                0 => return Err(self.invalid("h2-max-concurrent-streams", "must be at least 1")),
                n => n,
            },
            max_requests_in_flight: self.count(
                "max-requests-in-flight",
                k.max_requests_in_flight,
                4096,
            )?,
            max_client_connections: self.count(
                "max-client-connections",
                k.max_client_connections,
                10_000,
            )?,
            h2_max_header_list_size,
            proxy_protocol: self.proxy_protocol()?,
            tls,
            tls_listen: k.tls_listen,
            client_identity_header,
        })
    }

    /// One listener's TLS keys (`{prefix}tls-cert` and so on): none, or a
    /// cert and key both, with maybe a client CA and its mode. The files
    /// are read by the listener, not here, so that a reload with a bad
    /// certificate keeps the other keys' changes.
    fn tls_spec(
        &self,
        prefix: &'static str,
        cert: &Option<PathBuf>,
        key: &Option<PathBuf>,
        ca: &Option<PathBuf>,
        auth: Option<ClientAuthKey>,
    ) -> Result<Option<crate::tls::TlsSpec>, ConfigError> {
        let err =
            |what: &str, problem: String| self.invalid(&format!("{prefix}tls-{what}"), problem);
        let (cert, key) = match (cert, key) {
            (None, None) => {
                if ca.is_some() {
                    return Err(err(
                        "client-ca",
                        format!("set without {prefix}tls-cert and {prefix}tls-key"),
                    ));
                }
                if auth.is_some() {
                    return Err(err(
                        "client-auth",
                        format!("set without {prefix}tls-client-ca"),
                    ));
                }
                return Ok(None);
            }
            (Some(_), None) => {
                return Err(err(
                    "cert",
                    format!("set without {prefix}tls-key (TLS needs both)"),
                ));
            }
            (None, Some(_)) => {
                return Err(err(
                    "key",
                    format!("set without {prefix}tls-cert (TLS needs both)"),
                ));
            }
            (Some(c), Some(k)) => (c.clone(), k.clone()),
        };
        let mode = match auth {
            None | Some(ClientAuthKey::Required) => crate::tls::ClientAuth::Required,
            Some(ClientAuthKey::Optional) => crate::tls::ClientAuth::Optional,
        };
        let client_ca = match ca {
            Some(ca) => Some((ca.clone(), mode)),
            None if auth.is_some() => {
                return Err(err(
                    "client-auth",
                    format!("set without {prefix}tls-client-ca"),
                ));
            }
            None => None,
        };
        Ok(Some(crate::tls::TlsSpec {
            prefix,
            cert,
            key,
            client_ca,
            // Errors about the files name the file when the file set them.
            origin: self.origin_of(&format!("{prefix}tls-cert")),
        }))
    }

    fn thrift_tls_mode(
        &self,
        tls: &Option<crate::tls::TlsSpec>,
    ) -> Result<crate::tls::ThriftTlsMode, ConfigError> {
        use crate::tls::ThriftTlsMode;
        let k = self.keys;
        let mode = match k.thrift_tls_mode {
            None if tls.is_some() => ThriftTlsMode::Terminate,
            None | Some(ThriftTlsModeKey::Passthrough) => ThriftTlsMode::Passthrough,
            Some(ThriftTlsModeKey::Terminate) => ThriftTlsMode::Terminate,
            Some(ThriftTlsModeKey::Reencrypt) => ThriftTlsMode::Reencrypt {
                upstream: Box::new(thrift_upstream(k)),
            },
        };
        match (&mode, tls.is_some()) {
            (ThriftTlsMode::Passthrough, true) => {
                return Err(self.invalid(
                    "thrift-tls-mode",
                    "passthrough relays the client's TLS to Livy: thrift-tls-cert would not be used",
                ));
            }
            (ThriftTlsMode::Terminate | ThriftTlsMode::Reencrypt { .. }, false) => {
                return Err(self.invalid(
                    "thrift-tls-mode",
                    "terminate and reencrypt need thrift-tls-cert and thrift-tls-key",
                ));
            }
            _ => {}
        }
        if !matches!(mode, ThriftTlsMode::Reencrypt { .. }) {
            let set = [
                ("thrift-upstream-ca", k.thrift_upstream_ca.is_some()),
                (
                    "thrift-upstream-client-cert",
                    k.thrift_upstream_client_cert.is_some(),
                ),
                (
                    "thrift-upstream-client-key",
                    k.thrift_upstream_client_key.is_some(),
                ),
                (
                    "thrift-upstream-server-name",
                    k.thrift_upstream_server_name.is_some(),
                ),
            ];
            if let Some((key, _)) = set.iter().find(|(_, set)| *set) {
                return Err(self.invalid(key, "only used with thrift-tls-mode = reencrypt"));
            }
        }
        Ok(mode)
    }

    fn tcp(&self, http: &HttpSettings) -> Result<TcpSettings, ConfigError> {
        let k = self.keys;
        let tls = self.tls_spec(
            "thrift-",
            &k.thrift_tls_cert,
            &k.thrift_tls_key,
            &k.thrift_tls_client_ca,
            k.thrift_tls_client_auth,
        )?;
        Ok(TcpSettings {
            tls_mode: self.thrift_tls_mode(&tls)?,
            tls,
            listen: k.thrift_listen,
            hold_timeout: http.hold_timeout,
            connect_timeout: http.connect_timeout,
            thrift_port: k.thrift_port.unwrap_or(10090),
            close_on_failover: k.thrift_on_failover != Some(OnFailover::Keep),
            nodelay: k.tcp_nodelay.unwrap_or(true),
            keepalive: match k.tcp_keepalive {
                None => Some(Duration::from_secs(60)),
                Some(v) => v.on().map(|d| d.0),
            },
            idle_timeout: k.tcp_idle_timeout.and_then(|v| v.on()).map(|d| d.0),
            max_connections: self.count("max-tcp-connections", k.max_tcp_connections, 10_000)?,
            proxy_protocol: http.proxy_protocol.clone(),
        })
    }
}

/// TLS to Livy's Thrift port (reencrypt): each `thrift-upstream-*` key,
/// unset, takes its `upstream-*` counterpart's value (one company CA and
/// one proxy certificate are the common case); the client certificate and
/// key fall back as a pair, so a pair is never half one and half the other.
fn thrift_upstream(k: &Keys) -> crate::tls::client::UpstreamTlsSpec {
    use crate::tls::client::{KeyNames, UpstreamTlsSpec};
    let (own, base) = (KeyNames::JDBC_UPSTREAM, KeyNames::UPSTREAM);
    let (ca, ca_key) = match &k.thrift_upstream_ca {
        Some(ca) => (Some(ca.clone()), own.ca),
        None => (k.upstream_ca.clone(), base.ca),
    };
    let own_pair =
        k.thrift_upstream_client_cert.is_some() || k.thrift_upstream_client_key.is_some();
    let (client_cert, client_key, cert_key, key_key) = if own_pair {
        (
            k.thrift_upstream_client_cert.clone(),
            k.thrift_upstream_client_key.clone(),
            own.client_cert,
            own.client_key,
        )
    } else {
        (
            k.upstream_client_cert.clone(),
            k.upstream_client_key.clone(),
            base.client_cert,
            base.client_key,
        )
    };
    let (server_name, name_key) = match &k.thrift_upstream_server_name {
        Some(n) => (Some(n.clone()), own.server_name),
        None => (k.upstream_server_name.clone(), base.server_name),
    };
    UpstreamTlsSpec {
        ca,
        client_cert,
        client_key,
        server_name,
        keys: KeyNames {
            label: own.label,
            ca: ca_key,
            client_cert: cert_key,
            client_key: key_key,
            server_name: name_key,
        },
        alpn: crate::tls::ALPN_NONE,
    }
}

/// Reads and parses the TOML file; a parse error names the key on the line
/// it points at.
fn read_file(path: &Path) -> Result<Keys, ConfigError> {
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
        Config::from_args(["livy-proxy", "--config", f.path().to_str().unwrap()])
    }

    #[test]
    fn defaults_and_file_values() {
        let c = load_file(
            "zookeeper = \"127.0.0.1:2181/livy\"\nhold-timeout = \"3s\"\nnode = [\"livy-1=http://h1:8998\", { url = \"h2\", thrift = \"h2:10091\" }]\n",
        )
        .unwrap();
        assert_eq!(c.http.hold_timeout, Duration::from_secs(3));
        assert_eq!(c.discovery.leader_path, "/livy_ha/leader");
        assert_eq!(c.discovery.nodes.load().len(), 2);
        assert_eq!(c.discovery.nodes.load()[1].id, "h2");
        assert_eq!(
            c.discovery.nodes.load()[1].thrift.as_deref(),
            Some("h2:10091")
        );
        assert_eq!(c.http.max_replay_body, 1024 * 1024);
        assert_eq!(c.http.upstream_timeout, Duration::from_secs(600));
        assert_eq!(c.http.client_header_timeout, Duration::from_secs(30));
        assert_eq!(c.http.client_body_timeout, Duration::from_secs(60));
        assert_eq!(c.http.client_send_timeout, Duration::from_secs(60));
        assert_eq!(c.http.max_buffered_bodies, 64 * 1024 * 1024);
        assert_eq!(c.http.max_streaming_uploads, 128, "a quarter of 512");
        assert_eq!(c.http.h2_max_concurrent_streams, 100);
        assert_eq!(c.http.h2_max_header_list_size, 64 * 1024);
    }

    #[test]
    fn a_zero_duration_switches_an_or_off_key_off() {
        let c =
            load_file("zookeeper = \"a:1\"\ntcp-idle-timeout = \"0s\"\ntcp-keepalive = \"0ms\"\n")
                .unwrap();
        assert_eq!(c.tcp.idle_timeout, None, "0s is off, not an instant close");
        assert_eq!(c.tcp.keepalive, None);
        let c = load_file("zookeeper = \"a:1\"\ntcp-idle-timeout = \"2h\"\n").unwrap();
        assert_eq!(c.tcp.idle_timeout, Some(Duration::from_secs(7200)));
    }

    #[test]
    fn body_and_h2_limits_from_the_file_and_their_checks() {
        let c = load_file(
            "zookeeper = \"a:1\"\nclient-body-timeout = \"5s\"\nmax-buffered-bodies = \"8MiB\"\n\
             max-upstream-connections = 10\nh2-max-concurrent-streams = 7\nh2-max-header-list-size = \"16KiB\"\n",
        )
        .unwrap();
        assert_eq!(c.http.client_body_timeout, Duration::from_secs(5));
        assert_eq!(c.http.max_buffered_bodies, 8 * 1024 * 1024);
        assert_eq!(c.http.max_streaming_uploads, 2, "a quarter of 10");
        assert_eq!(c.http.h2_max_concurrent_streams, 7);
        assert_eq!(c.http.h2_max_header_list_size, 16 * 1024);
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
        let c = Config::from_args([
            "livy-proxy",
            "--config",
            f.path().to_str().unwrap(),
            "--hold-timeout",
            "7s",
        ]);
        assert_eq!(c.unwrap().http.hold_timeout, Duration::from_secs(7));
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
        assert_eq!(c.http.strip_headers, ["x-client-ip", "true-client-ip"]);
        assert!(c.http.emit_forwarded);
        let c = load_file("zookeeper = \"a:1\"\n").unwrap();
        assert!(c.http.strip_headers.is_empty());
        assert!(!c.http.emit_forwarded);
        // As the environment gives it: one comma-separated value.
        let c = Config::from_args([
            "livy-proxy",
            "--zookeeper",
            "a:1",
            "--strip-headers",
            "X-A, X-B",
            "--emit-forwarded",
            "true",
        ]);
        let c = c.unwrap();
        assert_eq!(c.http.strip_headers, ["x-a", "x-b"]);
        assert!(c.http.emit_forwarded);
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
                .http
                .public_url
                .as_deref(),
            Some("https://livy.example.com")
        );
        assert_eq!(
            url("http://proxy:8998").unwrap().http.public_url.as_deref(),
            Some("http://proxy:8998")
        );
        assert_eq!(
            url("https://proxy:443").unwrap().http.public_url.as_deref(),
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
                .http
                .public_url
                .is_none()
        );
    }

    #[test]
    fn proxy_protocol_keys_from_file_and_flags() {
        let c = load_file("zookeeper = \"a:1\"\n").unwrap();
        assert!(c.http.proxy_protocol.from.is_empty(), "off by default");
        assert_eq!(c.http.proxy_protocol.timeout, Duration::from_secs(5));
        let c = load_file(
            "zookeeper = \"a:1\"\nproxy-protocol-from = [\"10.0.0.0/8\", \"::1\"]\nproxy-protocol-timeout = \"2s\"\n",
        )
        .unwrap();
        assert!(
            c.http
                .proxy_protocol
                .from
                .contains("10.9.8.7".parse().unwrap())
        );
        assert!(c.http.proxy_protocol.from.contains("::1".parse().unwrap()));
        assert_eq!(c.http.proxy_protocol.timeout, Duration::from_secs(2));
        // As the environment gives it: one comma-separated value.
        let c = Config::from_args([
            "livy-proxy",
            "--zookeeper",
            "a:1",
            "--proxy-protocol-from",
            "192.168.0.0/16, 10.1.2.3",
            "--proxy-protocol-timeout",
            "750ms",
        ]);
        let c = c.unwrap();
        assert_eq!(c.http.proxy_protocol.from.networks().len(), 2);
        assert_eq!(c.http.proxy_protocol.timeout, Duration::from_millis(750));
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

    /// Every key's TOML name, from the one declaration.
    fn key_names() -> Vec<String> {
        Keys::augment_args(clap::Command::new("t"))
            .get_arguments()
            .filter_map(|a| a.get_long().map(str::to_string))
            .collect()
    }

    #[test]
    fn each_key_is_a_flag_an_env_variable_and_a_toml_key_of_one_name() {
        let command = Keys::augment_args(clap::Command::new("t"));
        for arg in command.get_arguments() {
            let long = arg.get_long().unwrap();
            let env = arg.get_env().unwrap().to_str().unwrap().to_string();
            assert_eq!(
                env,
                format!("LIVY_PROXY_{}", long.replace('-', "_").to_uppercase()),
                "{long}"
            );
            assert_eq!(arg.get_id().as_str().replace('_', "-"), long, "{long}");
        }
        // Serialized names are the TOML keys.
        let keys = key_values(&Keys {
            hold_timeout: Some(Dur(Duration::from_secs(1))),
            ..Keys::default()
        });
        assert!(keys.contains_key("hold-timeout"), "{keys:?}");
    }

    #[test]
    fn restart_only_names_real_keys_and_the_docs_agree() {
        let names = key_names();
        for k in RESTART_ONLY {
            assert!(names.iter().any(|n| n == k), "{k} is not a key");
        }
        let docs = std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/docs/configuration.md"
        ))
        .unwrap();
        for name in &names {
            let row = docs
                .lines()
                .find(|l| l.starts_with(&format!("| `{name}` |")))
                .unwrap_or_else(|| panic!("configuration.md has no row for `{name}`"));
            let reload = row.split('|').nth(3).unwrap_or("").trim();
            // "restart-only (contents re-read)" is restart-only too.
            let live = reload.starts_with("**live**");
            assert!(
                live || reload.starts_with("restart-only"),
                "configuration.md's row for `{name}`: {reload}"
            );
            assert_eq!(
                live,
                !RESTART_ONLY.contains(&name.as_str()),
                "configuration.md's row for `{name}` says {reload}"
            );
        }
    }

    #[test]
    fn an_error_names_the_file_only_for_a_value_from_the_file() {
        let mut f = tempfile::NamedTempFile::new().unwrap();
        f.write_all(b"zookeeper = \"a:1\"\nmax-requests-in-flight = 0\n")
            .unwrap();
        let path = f.path().to_str().unwrap();
        let e = Config::from_args(["livy-proxy", "--config", path])
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("config file ") && e.contains("`max-requests-in-flight`"),
            "{e}"
        );
        let e = Config::from_args([
            "livy-proxy",
            "--zookeeper",
            "a:1",
            "--max-client-connections",
            "0",
        ])
        .unwrap_err()
        .to_string();
        assert!(e.starts_with("key `max-client-connections`"), "{e}");
        let e = Config::from_args(["livy-proxy", "--hold-timeout", "soon"])
            .unwrap_err()
            .to_string();
        assert!(e.contains("--hold-timeout"), "clap names the flag: {e}");
    }

    #[test]
    fn sizes_durations_and_switches_read_the_same_from_file_and_flags() {
        let c = load_file(
            "zookeeper = \"a:1\"\nmax-replay-body = 2048\nmax-buffered-bodies = \"1MiB\"\n\
             tcp-keepalive = \"off\"\ntcp-idle-timeout = \"90s\"\nadmin-listen = \"off\"\n\
             thrift-on-failover = \"keep\"\nlog-format = \"json\"\n",
        )
        .unwrap();
        assert_eq!(c.http.max_replay_body, 2048);
        assert_eq!(c.http.max_buffered_bodies, 1024 * 1024);
        assert_eq!(c.tcp.keepalive, None);
        assert_eq!(c.tcp.idle_timeout, Some(Duration::from_secs(90)));
        assert_eq!(c.admin.listen, None);
        assert!(!c.tcp.close_on_failover);
        assert!(c.log.json);
        let c = Config::from_args([
            "livy-proxy",
            "--zookeeper",
            "a:1",
            "--max-replay-body",
            "2048",
            "--tcp-keepalive",
            "off",
            "--admin-listen",
            "off",
            "--thrift-on-failover",
            "keep",
        ])
        .unwrap();
        assert_eq!(c.http.max_replay_body, 2048);
        assert_eq!(c.tcp.keepalive, None);
        assert_eq!(c.admin.listen, None);
        assert!(!c.tcp.close_on_failover);
        assert!(
            error_of("zookeeper = \"a:1\"\nthrift-on-failover = \"maybe\"\n")
                .contains("`thrift-on-failover`")
        );
        assert!(
            error_of("zookeeper = \"a:1\"\ntcp-keepalive = \"often\"\n")
                .contains("`tcp-keepalive`")
        );
    }

    #[test]
    fn a_reload_keeps_restart_only_values_and_takes_live_ones() {
        let running =
            load_file("zookeeper = \"a:1\"\nlisten = \"127.0.0.1:1000\"\nhold-timeout = \"3s\"\n")
                .unwrap();
        let new = load_file(
            "zookeeper = \"b:2\"\nhold-timeout = \"9s\"\nmax-requests-in-flight = 5\nnode = [\"n=http://h:1\"]\n",
        )
        .unwrap();
        let mut changed = restart_only_changes(&running.keys, &new.keys);
        changed.sort();
        assert_eq!(changed, ["listen", "zookeeper"]);
        let applied = Config::from_keys(&keep_restart_only(&running.keys, &new.keys)).unwrap();
        assert_eq!(
            applied.http.listen, running.http.listen,
            "restart-only: kept"
        );
        assert_eq!(applied.discovery.zookeeper.as_deref(), Some("a:1"));
        assert_eq!(
            applied.http.hold_timeout,
            Duration::from_secs(9),
            "live: taken"
        );
        assert_eq!(applied.tcp.hold_timeout, Duration::from_secs(9));
        assert_eq!(applied.http.max_requests_in_flight, 5);
        assert_eq!(applied.discovery.nodes.load().len(), 1);
        assert!(restart_only_changes(&running.keys, &running.keys).is_empty());
    }

    #[test]
    fn zookeeper_connect_strings() {
        assert!(check_zookeeper("h1:2181,h2:2181/livy").is_ok());
        assert!(check_zookeeper("[::1]:2181").is_ok());
        assert!(check_zookeeper("h1").is_err());
        assert!(check_zookeeper("/chroot").is_err());
    }

    #[test]
    fn thrift_upstream_keys_fall_back_to_the_upstream_ones_the_pair_together() {
        let p = |s: &str| Some(PathBuf::from(s));
        let keys = Keys {
            upstream_ca: p("ca.pem"),
            upstream_client_cert: p("c.pem"),
            upstream_client_key: p("k.pem"),
            upstream_server_name: Some("livy.test".into()),
            ..Keys::default()
        };
        let spec = thrift_upstream(&keys);
        assert_eq!(spec.ca, p("ca.pem"));
        assert_eq!(
            (spec.client_cert, spec.client_key),
            (p("c.pem"), p("k.pem"))
        );
        assert_eq!(spec.server_name.as_deref(), Some("livy.test"));
        assert_eq!(spec.keys.ca, "upstream-ca");
        assert_eq!(spec.keys.label, "jdbc_upstream");
        assert!(spec.alpn.is_empty());
        // Their own values win; half a pair of their own takes no half of
        // the upstream pair.
        let keys = Keys {
            thrift_upstream_ca: p("thrift-ca.pem"),
            thrift_upstream_client_cert: p("tc.pem"),
            thrift_upstream_server_name: Some("thrift.test".into()),
            ..keys
        };
        let spec = thrift_upstream(&keys);
        assert_eq!(spec.ca, p("thrift-ca.pem"));
        assert_eq!((spec.client_cert, spec.client_key), (p("tc.pem"), None));
        assert_eq!(spec.keys.client_cert, "thrift-upstream-client-cert");
        assert_eq!(spec.keys.client_key, "thrift-upstream-client-key");
        assert_eq!(spec.server_name.as_deref(), Some("thrift.test"));
    }
}
