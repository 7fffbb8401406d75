//! The JDBC TCP proxy in-process, against in-process Thrift stand-ins (TCP
//! servers on their own loopback addresses), with the leader channel driven
//! by the test. End to end with ZooKeeper and a real Thrift client: see
//! tests/jdbc.rs.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use livy_proxy::discovery::LeaderView;
use livy_proxy::node::{AddressDefaults, LivyNode};
use livy_proxy::tcp_proxy::{TcpProxy, TcpSettings};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// The tests in this file run one at a time: the descriptor-leak test
/// counts the whole process's open files, which other tests would change.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// A Thrift stand-in: echoes every byte, and counts connections.
struct Echo {
    node: LivyNode,
    accepted: Arc<AtomicUsize>,
    stop: CancellationToken,
}

impl Echo {
    async fn start(id: &str, ip: &str) -> Echo {
        let listener = TcpListener::bind((ip, 0)).await.unwrap();
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

fn node(id: &str, thrift: SocketAddr) -> LivyNode {
    // The HTTP origin is irrelevant here; the Thrift address is explicit.
    let mut n = LivyNode::parse(
        &format!("{id}=http://{}:8998", thrift.ip()),
        AddressDefaults::default(),
    )
    .unwrap();
    n.thrift = Some(thrift.to_string());
    n
}

fn dead_addr(ip: &str) -> SocketAddr {
    let l = std::net::TcpListener::bind((ip, 0)).unwrap();
    l.local_addr().unwrap()
}

fn view(node: Option<&LivyNode>, generation: u64) -> LeaderView {
    LeaderView::fixed(node.cloned(), generation)
}

struct Setup {
    addr: SocketAddr,
    leader: watch::Sender<LeaderView>,
    stop: CancellationToken,
}

impl Drop for Setup {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

fn settings(hold: Duration) -> TcpSettings {
    TcpSettings {
        hold_timeout: hold,
        connect_timeout: Duration::from_secs(2),
        thrift_port: 10090,
        close_on_failover: true,
        nodelay: true,
        keepalive: Some(Duration::from_secs(60)),
        idle_timeout: None,
        max_connections: 10_000,
    }
}

async fn setup(nodes: Vec<LivyNode>, leader: Option<&LivyNode>, s: TcpSettings) -> Setup {
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

async fn roundtrip(addr: SocketAddr, msg: &[u8]) -> Vec<u8> {
    let mut c = TcpStream::connect(addr).await.unwrap();
    c.write_all(msg).await.unwrap();
    let mut buf = vec![0u8; msg.len()];
    tokio::time::timeout(Duration::from_secs(20), c.read_exact(&mut buf))
        .await
        .expect("echo in time")
        .expect("echo");
    buf
}

/// Reads until the proxy closes the connection; true if it did in time.
async fn closed_by_proxy(c: &mut TcpStream) -> bool {
    let mut buf = [0u8; 64];
    matches!(
        tokio::time::timeout(Duration::from_secs(20), c.read(&mut buf)).await,
        Ok(Ok(0)) | Ok(Err(_))
    )
}

#[tokio::test]
async fn stream_reaches_the_leader_only() {
    let _serial = SERIAL.lock().await;
    let a = Echo::start("livy-1", "127.0.0.31").await;
    let b = Echo::start("livy-2", "127.0.0.32").await;
    let s = setup(
        vec![a.node.clone(), b.node.clone()],
        Some(&b.node),
        settings(Duration::from_secs(5)),
    )
    .await;
    assert_eq!(roundtrip(s.addr, b"hello thrift").await, b"hello thrift");
    assert_eq!(b.accepted.load(Ordering::SeqCst), 1);
    assert_eq!(a.accepted.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn large_transfer_both_ways_is_byte_identical() {
    let _serial = SERIAL.lock().await;
    let b = Echo::start("livy-2", "127.0.0.32").await;
    let s = setup(
        vec![b.node.clone()],
        Some(&b.node),
        settings(Duration::from_secs(5)),
    )
    .await;
    let c = TcpStream::connect(s.addr).await.unwrap();
    let (mut r, mut w) = c.into_split();
    const SIZE: usize = 100 * 1024 * 1024;
    let writer = tokio::spawn(async move {
        let mut chunk = vec![0u8; 1 << 20];
        let mut sent = 0usize;
        while sent < SIZE {
            for (i, b) in chunk.iter_mut().enumerate() {
                *b = ((sent + i) % 251) as u8;
            }
            w.write_all(&chunk).await.unwrap();
            sent += chunk.len();
        }
        w.shutdown().await.unwrap();
    });
    let mut got = 0usize;
    let mut buf = vec![0u8; 1 << 16];
    let mut mismatch = None;
    loop {
        let n = tokio::time::timeout(Duration::from_secs(60), r.read(&mut buf))
            .await
            .unwrap()
            .unwrap();
        if n == 0 {
            break;
        }
        for (i, b) in buf[..n].iter().enumerate() {
            if *b != ((got + i) % 251) as u8 && mismatch.is_none() {
                mismatch = Some(got + i);
            }
        }
        got += n;
    }
    writer.await.unwrap();
    assert_eq!(mismatch, None, "byte-identical");
    assert_eq!(got, SIZE);
}

#[tokio::test]
async fn half_close_keeps_the_other_direction_open() {
    let _serial = SERIAL.lock().await;
    // A server that reads until the client's FIN, then answers: only works
    // if the proxy forwards the FIN and keeps the way back open. One small
    // message (one read) and one of many chunks.
    let listener = TcpListener::bind("127.0.0.33:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let (mut s, _) = listener.accept().await.unwrap();
            tokio::spawn(async move {
                let mut all = Vec::new();
                s.read_to_end(&mut all).await.unwrap();
                tokio::time::sleep(Duration::from_millis(100)).await;
                s.write_all(format!("got {} bytes", all.len()).as_bytes())
                    .await
                    .unwrap();
                s.shutdown().await.unwrap();
            });
        }
    });
    let n = node("livy-3", addr);
    let s = setup(vec![n.clone()], Some(&n), settings(Duration::from_secs(5))).await;
    for size in [1000, 5 * 1024 * 1024 + 7] {
        let mut c = TcpStream::connect(s.addr).await.unwrap();
        c.write_all(&vec![7u8; size]).await.unwrap();
        c.shutdown().await.unwrap();
        let mut answer = String::new();
        tokio::time::timeout(Duration::from_secs(20), c.read_to_string(&mut answer))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(answer, format!("got {size} bytes"));
    }
}

#[tokio::test]
async fn failover_closes_old_connections_and_new_ones_reach_the_new_leader() {
    let _serial = SERIAL.lock().await;
    let a = Echo::start("livy-1", "127.0.0.31").await;
    let b = Echo::start("livy-2", "127.0.0.32").await;
    let s = setup(
        vec![a.node.clone(), b.node.clone()],
        Some(&a.node),
        settings(Duration::from_secs(5)),
    )
    .await;
    let mut old = TcpStream::connect(s.addr).await.unwrap();
    old.write_all(b"ping").await.unwrap();
    let mut buf = [0u8; 4];
    old.read_exact(&mut buf).await.unwrap();
    s.leader.send(view(Some(&b.node), 2)).unwrap();
    assert!(
        closed_by_proxy(&mut old).await,
        "old connection closed at once"
    );
    assert_eq!(roundtrip(s.addr, b"pong").await, b"pong");
    assert_eq!(b.accepted.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn keep_policy_leaves_old_connections_open() {
    let _serial = SERIAL.lock().await;
    let a = Echo::start("livy-1", "127.0.0.31").await;
    let b = Echo::start("livy-2", "127.0.0.32").await;
    let mut st = settings(Duration::from_secs(5));
    st.close_on_failover = false;
    let s = setup(vec![a.node.clone(), b.node.clone()], Some(&a.node), st).await;
    let mut old = TcpStream::connect(s.addr).await.unwrap();
    old.write_all(b"ping").await.unwrap();
    let mut buf = [0u8; 4];
    old.read_exact(&mut buf).await.unwrap();
    s.leader.send(view(Some(&b.node), 2)).unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    old.write_all(b"more").await.unwrap();
    old.read_exact(&mut buf).await.unwrap();
    assert_eq!(&buf, b"more");
}

#[tokio::test]
async fn refused_leader_falls_back_to_the_node_that_accepts() {
    let _serial = SERIAL.lock().await;
    let dead = node("livy-1", dead_addr("127.0.0.34"));
    let b = Echo::start("livy-2", "127.0.0.32").await;
    // Discovery keeps naming the dead node (its session has not expired).
    let s = setup(
        vec![dead.clone(), b.node.clone()],
        Some(&dead),
        settings(Duration::from_secs(10)),
    )
    .await;
    assert_eq!(roundtrip(s.addr, b"hi").await, b"hi");
    assert_eq!(b.accepted.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn no_leader_closes_the_connection_after_the_hold_time() {
    let _serial = SERIAL.lock().await;
    let s = setup(vec![], None, settings(Duration::from_millis(300))).await;
    let mut c = TcpStream::connect(s.addr).await.unwrap();
    assert!(closed_by_proxy(&mut c).await);
}

#[tokio::test]
async fn idle_timeout_closes_quiet_connections() {
    let _serial = SERIAL.lock().await;
    let b = Echo::start("livy-2", "127.0.0.32").await;
    let mut st = settings(Duration::from_secs(5));
    st.idle_timeout = Some(Duration::from_secs(1));
    let s = setup(vec![b.node.clone()], Some(&b.node), st).await;
    let mut c = TcpStream::connect(s.addr).await.unwrap();
    // Bytes every 200 ms keep it open well past the timeout...
    for _ in 0..15 {
        c.write_all(b"x").await.unwrap();
        let mut one = [0u8; 1];
        c.read_exact(&mut one).await.unwrap();
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // ...and silence closes it.
    assert!(closed_by_proxy(&mut c).await);
}

#[tokio::test]
async fn connection_limit_closes_extra_connections() {
    let _serial = SERIAL.lock().await;
    let b = Echo::start("livy-2", "127.0.0.32").await;
    let mut st = settings(Duration::from_secs(5));
    st.max_connections = 2;
    let s = setup(vec![b.node.clone()], Some(&b.node), st).await;
    let mut first = TcpStream::connect(s.addr).await.unwrap();
    let mut second = TcpStream::connect(s.addr).await.unwrap();
    for c in [&mut first, &mut second] {
        c.write_all(b"a").await.unwrap();
        let mut one = [0u8; 1];
        c.read_exact(&mut one).await.unwrap();
    }
    let mut third = TcpStream::connect(s.addr).await.unwrap();
    assert!(closed_by_proxy(&mut third).await, "over the limit: closed");
    drop(first);
    // A slot frees up once the first connection is gone.
    let mut ok = false;
    for _ in 0..100 {
        let mut c = TcpStream::connect(s.addr).await.unwrap();
        if c.write_all(b"b").await.is_ok() {
            let mut one = [0u8; 1];
            if let Ok(Ok(_)) =
                tokio::time::timeout(Duration::from_millis(500), c.read_exact(&mut one)).await
            {
                ok = true;
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(ok, "a freed slot is reused");
}

fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd").unwrap().count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thousands_of_connections_leak_no_descriptors() {
    let _serial = SERIAL.lock().await;
    let _ = rlimit::increase_nofile_limit(u64::MAX);
    let b = Echo::start("livy-2", "127.0.0.32").await;
    let s = setup(
        vec![b.node.clone()],
        Some(&b.node),
        settings(Duration::from_secs(10)),
    )
    .await;
    // Warm up whatever the runtime allocates once.
    roundtrip(s.addr, b"warm").await;
    let before = open_fds();
    let rounds = 2000usize;
    let mut tasks = Vec::new();
    for i in 0..rounds {
        let addr = s.addr;
        tasks.push(tokio::spawn(async move {
            let msg = format!("conn {i}");
            roundtrip(addr, msg.as_bytes()).await == msg.as_bytes()
        }));
    }
    for t in tasks {
        assert!(t.await.unwrap());
    }
    // At least one upstream connection each (a connect that outlives
    // connect-timeout under this burst is retried, so more is possible).
    assert!(b.accepted.load(Ordering::SeqCst) > rounds);
    // Closing is asynchronous on the proxy side: wait (bounded) for it.
    let mut after = open_fds();
    for _ in 0..200 {
        if after <= before {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        after = open_fds();
    }
    assert!(
        after <= before,
        "descriptors before {before}, after {after}"
    );
}

#[tokio::test]
async fn unreachable_leader_and_no_other_node_closes_after_the_hold_time() {
    let _serial = SERIAL.lock().await;
    let dead = node("livy-1", dead_addr("127.0.0.34"));
    let s = setup(
        vec![dead.clone()],
        Some(&dead),
        settings(Duration::from_millis(500)),
    )
    .await;
    let mut c = TcpStream::connect(s.addr).await.unwrap();
    assert!(closed_by_proxy(&mut c).await);
}
