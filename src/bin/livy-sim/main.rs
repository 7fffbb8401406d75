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
//!   `/_sim/requests` for tests to see what happened.
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
        requests: Mutex::new(Vec::new()),
        store: Mutex::new(rest::Store::default()),
        thrift_connections: Default::default(),
    });
    tokio::spawn(log_roles(args.id.clone(), role_rx.clone()));
    if let Some(addr) = args.thrift_listen {
        tokio::spawn(thrift_port(addr, sim.clone()));
    }
    tokio::spawn(http_server(args.listen, sim.clone(), args.restart_on_elect));

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
