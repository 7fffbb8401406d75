//! What tests/tcp_proxy.rs and tests/tcp_proxy_fds.rs share: a Thrift
//! stand-in, the JDBC proxy in-process with a leader channel the test
//! drives, and one echoed round trip through it.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use livy_proxy::discovery::{LeaderView, Source};
use livy_proxy::node::{AddressDefaults, LivyNode};
use livy_proxy::tcp_proxy::{TcpProxy, TcpSettings};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// A Thrift stand-in: echoes every byte, and counts connections.
pub struct Echo {
    pub node: LivyNode,
    pub accepted: Arc<AtomicUsize>,
    stop: CancellationToken,
}

impl Echo {
    pub async fn start(id: &str, ip: &str) -> Echo {
        Echo::start_on(id, format!("{ip}:0").parse().unwrap()).await
    }

    /// An echo at `addr` exactly (a port chosen before, where a server
    /// refused at first).
    pub async fn start_on(id: &str, addr: SocketAddr) -> Echo {
        let listener = TcpListener::bind(addr).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let accepted = Arc::new(AtomicUsize::new(0));
        let stop = CancellationToken::new();
        let (acc, stop2) = (accepted.clone(), stop.clone());
        tokio::spawn(async move {
            loop {
                let (mut s, _) = tokio::select! {
                    _ = stop2.cancelled() => return,
                    a = listener.accept() => a.unwrap(),
                };
                acc.fetch_add(1, Ordering::SeqCst);
                let stop3 = stop2.clone();
                tokio::spawn(async move {
                    let (mut r, mut w) = s.split();
                    tokio::select! {
                        _ = tokio::io::copy(&mut r, &mut w) => { let _ = w.shutdown().await; }
                        _ = stop3.cancelled() => {}
                    }
                });
            }
        });
        Echo {
            node: node(id, addr),
            accepted,
            stop,
        }
    }
}

impl Drop for Echo {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// A node whose Thrift server is at `thrift`.
pub fn node(id: &str, thrift: SocketAddr) -> LivyNode {
    // The HTTP origin is irrelevant here; the Thrift address is explicit.
    let mut n = LivyNode::parse(
        &format!("{id}=http://{}:8998", thrift.ip()),
        AddressDefaults::default(),
    )
    .unwrap();
    n.thrift = Some(thrift.to_string());
    n
}

/// A discovery view naming `node` as the leader (none if `None`).
pub fn view(node: Option<&LivyNode>, generation: u64) -> LeaderView {
    LeaderView::fixed(node.cloned(), generation)
}

/// A view naming `node` as discovery's `source` publishes it, `stale` or
/// fresh: the JDBC proxy's choices depend on both.
pub fn sourced(node: &LivyNode, generation: u64, source: Source, stale: bool) -> LeaderView {
    LeaderView {
        source,
        stale,
        ..view(Some(node), generation)
    }
}

/// A proxy serving in the background until dropped.
pub struct Setup {
    /// Where it listens.
    pub addr: SocketAddr,
    /// What discovery tells it: send a new view to move the leader.
    pub leader: watch::Sender<LeaderView>,
    stop: CancellationToken,
}

impl Drop for Setup {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// The proxy's settings in these tests, with `hold` as the hold timeout.
pub fn settings(hold: Duration) -> TcpSettings {
    TcpSettings {
        listen: None,
        tls: None,
        tls_mode: livy_proxy::tls::ThriftTlsMode::Passthrough,
        hold_timeout: hold,
        connect_timeout: Duration::from_secs(2),
        thrift_port: 10090,
        close_on_failover: true,
        nodelay: true,
        keepalive: Some(Duration::from_secs(60)),
        idle_timeout: None,
        max_connections: 10_000,
        proxy_protocol: Default::default(),
    }
}

/// Starts a proxy over `nodes` with `leader` in its first view.
pub async fn setup(nodes: Vec<LivyNode>, leader: Option<&LivyNode>, s: TcpSettings) -> Setup {
    let (tx, rx) = watch::channel(view(leader, 1));
    let proxy = TcpProxy::new(s, Arc::new(nodes), rx);
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let stop = CancellationToken::new();
    tokio::spawn(proxy.serve(listener, stop.clone()));
    Setup {
        addr,
        leader: tx,
        stop,
    }
}

/// Sends `msg` on a new connection to `addr` and returns what comes back
/// (as many bytes).
pub async fn roundtrip(addr: SocketAddr, msg: &[u8]) -> Vec<u8> {
    let mut c = TcpStream::connect(addr).await.unwrap();
    c.write_all(msg).await.unwrap();
    let mut buf = vec![0u8; msg.len()];
    tokio::time::timeout(Duration::from_secs(20), c.read_exact(&mut buf))
        .await
        .expect("echo in time")
        .expect("echo");
    buf
}
