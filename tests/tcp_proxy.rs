//! The JDBC TCP proxy in-process, against in-process Thrift stand-ins (TCP
//! servers on their own loopback addresses), with the leader channel driven
//! by the test. End to end with ZooKeeper and a real Thrift client: see
//! tests/jdbc.rs.

mod tcp_common;

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::time::Duration;

use livy_proxy::discovery::{LeaderView, Source};
use tcp_common::{Echo, node, roundtrip, settings, setup, sourced, view};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// The tests in this file run one at a time, so the timing-bound ones (idle
/// timeout, hold time) never share CI's two cores with the 100 MiB transfer.
/// (It was first taken for the descriptor-leak test, which needs a process
/// to itself, more than a lock can give: that test is in
/// tests/tcp_proxy_fds.rs.)
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn dead_addr(ip: &str) -> SocketAddr {
    let l = std::net::TcpListener::bind((ip, 0)).unwrap();
    l.local_addr().unwrap()
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

/// Static mode publishes "no leader" when one probe of the active node
/// misses (a GC pause longer than probe-timeout), and the same node at the
/// next round: its JDBC streams must live through that. Only a view naming
/// another leader closes them.
#[tokio::test]
async fn a_stream_outlives_no_leader_and_closes_when_another_leader_is_named() {
    let _serial = SERIAL.lock().await;
    let a = Echo::start("livy-1", "127.0.0.31").await;
    let b = Echo::start("livy-2", "127.0.0.32").await;
    let s = setup(
        vec![a.node.clone(), b.node.clone()],
        Some(&a.node),
        settings(Duration::from_secs(5)),
    )
    .await;
    let mut stream = TcpStream::connect(s.addr).await.unwrap();
    let mut buf = [0u8; 4];
    stream.write_all(b"ping").await.unwrap();
    stream.read_exact(&mut buf).await.unwrap();
    s.leader
        .send(sourced(&a.node, 2, Source::Probe, false))
        .unwrap();
    s.leader
        .send(LeaderView {
            source: Source::Probe,
            ..view(None, 3)
        })
        .unwrap();
    // A close on "no leader" would come at once; give the proxy the time
    // to make that mistake before asking the stream.
    tokio::time::sleep(Duration::from_millis(300)).await;
    stream.write_all(b"gone").await.unwrap();
    stream.read_exact(&mut buf).await.unwrap();
    assert_eq!(&buf, b"gone", "the stream lives while no leader is known");
    s.leader
        .send(sourced(&a.node, 4, Source::Probe, false))
        .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    stream.write_all(b"back").await.unwrap();
    stream.read_exact(&mut buf).await.unwrap();
    assert_eq!(&buf, b"back", "and when the same leader is named again");
    s.leader
        .send(sourced(&b.node, 5, Source::Probe, false))
        .unwrap();
    assert!(
        closed_by_proxy(&mut stream).await,
        "another leader named: closed"
    );
}

/// ZooKeeper is the authority: a fresh latch naming no leader (nobody
/// holds it, or an id no `node` maps) means the open stream's server no
/// longer leads.
#[tokio::test]
async fn a_stream_is_closed_when_a_fresh_latch_names_no_leader() {
    let _serial = SERIAL.lock().await;
    let a = Echo::start("livy-1", "127.0.0.31").await;
    let s = setup(
        vec![a.node.clone()],
        Some(&a.node),
        settings(Duration::from_secs(5)),
    )
    .await;
    s.leader
        .send(sourced(&a.node, 2, Source::ZooKeeper, false))
        .unwrap();
    let mut stream = TcpStream::connect(s.addr).await.unwrap();
    let mut buf = [0u8; 4];
    stream.write_all(b"ping").await.unwrap();
    stream.read_exact(&mut buf).await.unwrap();
    s.leader
        .send(LeaderView {
            source: Source::ZooKeeper,
            ..view(None, 3)
        })
        .unwrap();
    assert!(
        closed_by_proxy(&mut stream).await,
        "the latch names no leader: closed"
    );
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

/// Where the view may be behind: the static probe (a takeover between two
/// rounds) or a stale latch (ZooKeeper unreachable, the last leader kept).
#[tokio::test]
async fn refused_leader_falls_back_to_the_node_that_accepts_when_probed_or_stale() {
    let _serial = SERIAL.lock().await;
    for (source, stale) in [(Source::Probe, false), (Source::ZooKeeper, true)] {
        let dead = node("livy-1", dead_addr("127.0.0.34"));
        let b = Echo::start("livy-2", "127.0.0.32").await;
        // Discovery keeps naming the dead node (between probe rounds, or
        // the last latch leader while ZooKeeper is out of reach).
        let s = setup(
            vec![dead.clone(), b.node.clone()],
            Some(&dead),
            settings(Duration::from_secs(10)),
        )
        .await;
        s.leader.send(sourced(&dead, 1, source, stale)).unwrap();
        assert_eq!(roundtrip(s.addr, b"hi").await, b"hi");
        assert_eq!(
            b.accepted.load(Ordering::SeqCst),
            1,
            "{source:?} stale={stale}"
        );
    }
}

/// A fresh latch names the only active server: a Livy server that lost
/// leadership keeps running, and its Thrift port may still accept. A
/// refusing latch leader (a new leader restarting its Thrift server) is
/// retried until it accepts; the other node is never used.
#[tokio::test]
async fn a_refusing_fresh_latch_leader_is_retried_and_an_accepting_passive_never_used() {
    let _serial = SERIAL.lock().await;
    let leader_addr = dead_addr("127.0.0.34");
    let leader = node("livy-1", leader_addr);
    let passive = Echo::start("livy-2", "127.0.0.32").await;
    let s = setup(
        vec![leader.clone(), passive.node.clone()],
        Some(&leader),
        settings(Duration::from_secs(20)),
    )
    .await;
    s.leader
        .send(sourced(&leader, 1, Source::ZooKeeper, false))
        .unwrap();
    let client = tokio::spawn(roundtrip(s.addr, b"hi"));
    // Several connect attempts and backoffs fit in this second.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let restarted = Echo::start_on("livy-1", leader_addr).await;
    assert_eq!(client.await.unwrap(), b"hi");
    assert_eq!(
        restarted.accepted.load(Ordering::SeqCst),
        1,
        "the latch leader served"
    );
    assert_eq!(
        passive.accepted.load(Ordering::SeqCst),
        0,
        "a node the fresh latch does not name is never connected to"
    );
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
