//! livy-sim: a simulated Apache Livy server in HA mode, for tests and the demo.
//!
//! It elects its leader the way Livy does, by running the real Curator
//! `LeaderLatch` (tests/support/LatchMember.java, started as a child JVM),
//! and behaves like a Livy server in each role:
//! - passive: every path (but `/_sim/*`) gets exactly what Livy's
//!   `DomainRedirectionFilter` sends: 307, `Location` = the request URL with
//!   only the host replaced by the leader's host name, and a text body;
//! - active: Livy's REST subset (version, sessions, statements, batches,
//!   logs, state) with in-memory state, `/cliservice` standing in for the
//!   Thrift HTTP servlet, and a Thrift TCP port (an echo server) that is
//!   bound only while active, so passives refuse JDBC;
//! - always: `x-livy-node: <id>` on every answer, and `/_sim/state`,
//!   `/_sim/requests` for tests to see what happened;
//! - with `--tls-port` (and `--tls-cert`/`--tls-key`): the same server over
//!   TLS on that port of the listen address, beside the plain one (which
//!   the tests' harness keeps using for `/_sim/*`); a passive's redirect
//!   from it names `https://`; `--tls-client-ca` requires a client
//!   certificate signed by that CA (mutual TLS, as a Livy behind a
//!   client-certificate policy);
//! - with `--reject-body-after N`: a request body is read up to N bytes and
//!   then answered 413 without the rest (a server that refuses an upload
//!   before it ends).
//!
//! SIGTERM closes the latch cleanly (the znode goes at once); SIGKILL leaves
//! the JVM to notice its stdin closing and halt without closing anything, so
//! the znode stays until the ZooKeeper session expires, like a crashed Livy.

mod rest;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use clap::Parser;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpListener;
use tokio::sync::watch;

/// Command line of the simulator.
#[derive(Parser, Debug)]
#[command(
    name = "livy-sim",
    about = "A simulated Livy server in HA mode (tests and demo)"
)]
struct Args {
    /// Participant id in the latch.
    #[arg(long)]
    id: String,
    /// HTTP listen address.
    #[arg(long)]
    listen: SocketAddr,
    /// Thrift (JDBC) listen address, bound only while active.
    #[arg(long)]
    thrift_listen: Option<SocketAddr>,
    /// ZooKeeper connect string (election through the Curator latch).
    #[arg(long)]
    zookeeper: Option<String>,
    /// Latch path.
    #[arg(long, default_value = "/livy_ha/leader")]
    leader_path: String,
    /// Classpath holding LatchMember.class and the Curator jars.
    #[arg(long)]
    latch_classpath: Option<String>,
    /// ZooKeeper session timeout of the latch client.
    #[arg(long, default_value_t = 4000)]
    session_timeout_ms: u64,
    /// ID=HOST: participant id to host name (Livy's server-ids / server-hostnames).
    #[arg(long = "peer")]
    peers: Vec<String>,
    /// Serve Cloudera's /ha-status.
    #[arg(long)]
    ha_status: bool,
    /// After winning, refuse HTTP connections this long (Livy restarts its server).
    #[arg(long, value_parser = humantime::parse_duration)]
    restart_on_elect: Option<Duration>,
    /// Without ZooKeeper: a fixed role, `active` or `passive`.
    #[arg(long)]
    static_role: Option<String>,
    /// Without ZooKeeper: the leader's host name, for a passive's redirects.
    #[arg(long)]
    static_leader: Option<String>,
    /// A passive reads the request body before redirecting (as a server
    /// that answers `Expect: 100-continue` eagerly would), instead of
    /// redirecting with the body unread like Livy's filter.
    #[arg(long)]
    passive_reads_body: bool,
    /// Also serve TLS on this port of the listen address.
    #[arg(long, requires_all = ["tls_cert", "tls_key"])]
    tls_port: Option<u16>,
    /// PEM certificate chain of the TLS port.
    #[arg(long)]
    tls_cert: Option<std::path::PathBuf>,
    /// PEM key of the TLS port.
    #[arg(long)]
    tls_key: Option<std::path::PathBuf>,
    /// Require TLS clients to present a certificate signed by this CA.
    #[arg(long)]
    tls_client_ca: Option<std::path::PathBuf>,
    /// Answer 413 once this many bytes of a request body were read,
    /// leaving the rest unread.
    #[arg(long)]
    reject_body_after: Option<u64>,
}

/// The election as this server sees it.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Role {
    /// This server holds the latch.
    pub leader: bool,
    /// The latch's current leader id, if known.
    pub leader_id: Option<String>,
}

/// State shared by the HTTP handlers.
pub struct Sim {
    /// This server's participant id.
    pub id: String,
    /// The listen port (for redirects when the request has no Host port).
    pub port: u16,
    /// id -> host name.
    pub peers: HashMap<String, String>,
    /// Whether /ha-status exists.
    pub ha_status: bool,
    /// Current role.
    pub role: watch::Receiver<Role>,
    /// Sets the role (`POST /_sim/role`), as the latch does.
    pub set_role: Arc<watch::Sender<Role>>,
    /// See `Args::passive_reads_body`.
    pub passive_reads_body: bool,
    /// See `Args::reject_body_after`.
    pub reject_body_after: Option<u64>,
    /// Every non-/_sim request seen.
    pub requests: Mutex<Vec<serde_json::Value>>,
    /// REST state.
    pub store: Mutex<rest::Store>,
    /// Thrift connections accepted.
    pub thrift_connections: std::sync::atomic::AtomicU64,
}

#[tokio::main]
async fn main() {
    let args = Args::parse();
    let peers: HashMap<String, String> = args
        .peers
        .iter()
        .filter_map(|p| {
            p.split_once('=')
                .map(|(a, b)| (a.to_string(), b.to_string()))
        })
        .collect();
    let (role_tx, role_rx) = watch::channel(Role::default());
    let role_tx = Arc::new(role_tx);
    let mut latch = None;
    match (&args.zookeeper, &args.static_role) {
        (Some(zk), _) => {
            let Some(cp) = args.latch_classpath.clone() else {
                eprintln!("livy-sim: --zookeeper needs --latch-classpath");
                std::process::exit(2);
            };
            latch = Some(start_latch(
                &cp,
                zk,
                &args.leader_path,
                &args.id,
                args.session_timeout_ms,
                role_tx.clone(),
            ));
        }
        (None, Some(role)) => {
            let _ = role_tx.send(Role {
                leader: role == "active",
                leader_id: if role == "active" {
                    Some(args.id.clone())
                } else {
                    args.static_leader.clone()
                },
            });
        }
        (None, None) => {
            eprintln!("livy-sim: give --zookeeper or --static-role");
            std::process::exit(2);
        }
    }
    let mut peers = peers;
    if let (Some(host), None) = (&args.static_leader, &args.zookeeper) {
        peers.insert(host.clone(), host.clone());
    }
    let sim = Arc::new(Sim {
        id: args.id.clone(),
        port: args.listen.port(),
        peers,
        ha_status: args.ha_status,
        role: role_rx.clone(),
        set_role: role_tx,
        passive_reads_body: args.passive_reads_body,
        reject_body_after: args.reject_body_after,
        requests: Mutex::new(Vec::new()),
        store: Mutex::new(rest::Store::default()),
        thrift_connections: Default::default(),
    });
    tokio::spawn(log_roles(args.id.clone(), role_rx.clone()));
    if let Some(addr) = args.thrift_listen {
        tokio::spawn(thrift_port(addr, sim.clone()));
    }
    tokio::spawn(http_server(args.listen, sim.clone(), args.restart_on_elect));
    if let (Some(port), Some(cert), Some(key)) = (args.tls_port, &args.tls_cert, &args.tls_key) {
        let config = tls_config(cert, key, args.tls_client_ca.as_deref());
        let addr = SocketAddr::new(args.listen.ip(), port);
        tokio::spawn(https_server(addr, sim.clone(), config));
    }

    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("signal handler");
    let mut int = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())
        .expect("signal handler");
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
    eprintln!("livy-sim {}: stopping, closing the latch", args.id);
    if let Some((mut child, mut stdin)) = latch {
        let _ = stdin.write_all(b"close\n").await;
        let _ = stdin.flush().await;
        let _ = tokio::time::timeout(Duration::from_secs(10), child.wait()).await;
        let _ = child.kill().await;
    }
}

fn start_latch(
    classpath: &str,
    zk: &str,
    path: &str,
    id: &str,
    timeout_ms: u64,
    role: Arc<watch::Sender<Role>>,
) -> (tokio::process::Child, tokio::process::ChildStdin) {
    let mut cmd = tokio::process::Command::new("java");
    cmd.args([
        "-cp",
        classpath,
        "LatchMember",
        zk,
        path,
        id,
        &timeout_ms.to_string(),
    ])
    .stdin(Stdio::piped())
    .stdout(Stdio::piped())
    .stderr(Stdio::null())
    .kill_on_drop(false);
    let mut child = cmd.spawn().expect("java starts (is a JDK installed?)");
    let stdin = child.stdin.take().expect("piped stdin");
    let stdout = child.stdout.take().expect("piped stdout");
    tokio::spawn(async move {
        let mut lines = BufReader::new(stdout).lines();
        while let Ok(Some(line)) = lines.next_line().await {
            let line = line.trim();
            role.send_modify(|r| {
                if line == "LEADER" {
                    r.leader = true;
                } else if line == "FOLLOWER" {
                    r.leader = false;
                } else if let Some(id) = line.strip_prefix("LEADER_ID") {
                    let id = id.trim();
                    r.leader_id = (!id.is_empty()).then(|| id.to_string());
                }
            });
        }
        // The JVM is gone: this server can no longer claim anything.
        role.send_replace(Role::default());
    });
    (child, stdin)
}

async fn log_roles(id: String, mut rx: watch::Receiver<Role>) {
    let mut was = false;
    loop {
        let now = rx.borrow_and_update().leader;
        if now != was {
            let ts = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_millis())
                .unwrap_or(0);
            eprintln!(
                "livy-sim {id}: {} at {ts}",
                if now { "LEADER" } else { "FOLLOWER" }
            );
            was = now;
        }
        if rx.changed().await.is_err() {
            return;
        }
    }
}

/// Serves HTTP; after each election win (optionally) closes the listener
/// for a moment, as Livy's `transitionToActive` restarts its server.
async fn http_server(addr: SocketAddr, sim: Arc<Sim>, restart: Option<Duration>) {
    let mut role = sim.role.clone();
    loop {
        let listener = match bind_retry(addr).await {
            Some(l) => l,
            None => return,
        };
        let was_leader = role.borrow_and_update().leader;
        loop {
            tokio::select! {
                accepted = listener.accept() => {
                    let Ok((stream, _)) = accepted else { continue };
                    let sim = sim.clone();
                    tokio::spawn(async move {
                        let svc = hyper::service::service_fn(move |req| rest::handle(sim.clone(), req));
                        let _ = hyper::server::conn::http1::Builder::new()
                            .serve_connection(hyper_util::rt::TokioIo::new(stream), svc)
                            .await;
                    });
                }
                changed = role.changed() => {
                    if changed.is_err() { return; }
                    let now = role.borrow_and_update().leader;
                    if let (Some(pause), false, true) = (restart, was_leader, now) {
                        drop(listener);
                        eprintln!("livy-sim {}: restarting the web server for {pause:?}", sim.id);
                        tokio::time::sleep(pause).await;
                        break;
                    }
                }
            }
        }
    }
}

/// Marks a request that came over the TLS port.
#[derive(Clone, Copy)]
pub struct ViaTls;

/// The TLS port's rustls configuration (the simulator exits on bad files:
/// it is a test tool).
fn tls_config(
    cert: &std::path::Path,
    key: &std::path::Path,
    client_ca: Option<&std::path::Path>,
) -> Arc<rustls::ServerConfig> {
    use rustls_pki_types::pem::PemObject;
    let fail = |what: &str, e: &dyn std::fmt::Display| -> ! {
        eprintln!("livy-sim: {what}: {e}");
        std::process::exit(2)
    };
    let chain: Vec<_> = rustls_pki_types::CertificateDer::pem_file_iter(cert)
        .unwrap_or_else(|e| fail("--tls-cert", &e))
        .collect::<Result<_, _>>()
        .unwrap_or_else(|e| fail("--tls-cert", &e));
    let key = rustls_pki_types::PrivateKeyDer::from_pem_file(key)
        .unwrap_or_else(|e| fail("--tls-key", &e));
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .unwrap_or_else(|e| fail("TLS", &e));
    let builder = match client_ca {
        None => builder.with_no_client_auth(),
        Some(ca) => {
            let mut roots = rustls::RootCertStore::empty();
            for c in rustls_pki_types::CertificateDer::pem_file_iter(ca)
                .unwrap_or_else(|e| fail("--tls-client-ca", &e))
            {
                let c = c.unwrap_or_else(|e| fail("--tls-client-ca", &e));
                roots.add(c).unwrap_or_else(|e| fail("--tls-client-ca", &e));
            }
            let verifier =
                rustls::server::WebPkiClientVerifier::builder_with_provider(roots.into(), provider)
                    .build()
                    .unwrap_or_else(|e| fail("--tls-client-ca", &e));
            builder.with_client_cert_verifier(verifier)
        }
    };
    let mut config = builder
        .with_single_cert(chain, key)
        .unwrap_or_else(|e| fail("--tls-key", &e));
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Arc::new(config)
}

/// Serves the same HTTP over TLS.
async fn https_server(addr: SocketAddr, sim: Arc<Sim>, config: Arc<rustls::ServerConfig>) {
    let Some(listener) = bind_retry(addr).await else {
        return;
    };
    let acceptor = tokio_rustls::TlsAcceptor::from(config);
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let (sim, acceptor) = (sim.clone(), acceptor.clone());
        tokio::spawn(async move {
            let stream = match acceptor.accept(stream).await {
                Ok(s) => s,
                Err(e) => {
                    eprintln!("livy-sim {}: TLS handshake refused: {e}", sim.id);
                    return;
                }
            };
            let svc = hyper::service::service_fn(move |mut req: http::Request<_>| {
                req.extensions_mut().insert(ViaTls);
                rest::handle(sim.clone(), req)
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(hyper_util::rt::TokioIo::new(stream), svc)
                .await;
        });
    }
}

async fn bind_retry(addr: SocketAddr) -> Option<TcpListener> {
    for _ in 0..100 {
        match TcpListener::bind(addr).await {
            Ok(l) => return Some(l),
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
    eprintln!("livy-sim: cannot bind {addr}");
    None
}

/// The Thrift port: bound only while leader; an echo server.
async fn thrift_port(addr: SocketAddr, sim: Arc<Sim>) {
    let mut role = sim.role.clone();
    loop {
        // Wait to lead.
        if role.wait_for(|r| r.leader).await.is_err() {
            return;
        }
        let Some(listener) = bind_retry(addr).await else {
            return;
        };
        loop {
            tokio::select! {
                accepted = listener.accept() => {
                    let Ok((mut stream, _)) = accepted else { continue };
                    sim.thrift_connections.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    tokio::spawn(async move {
                        let (mut r, mut w) = stream.split();
                        let _ = tokio::io::copy(&mut r, &mut w).await;
                        let _ = w.shutdown().await;
                    });
                }
                lost = role.wait_for(|r| !r.leader) => {
                    if lost.is_err() { return; }
                    break; // drop the listener: passives refuse JDBC
                }
            }
        }
    }
}
