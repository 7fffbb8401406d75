//! What an idle kept-alive client connection costs in heap once it is
//! parked (`http_proxy::park`): this test binary counts every allocation
//! (its own global allocator), serves the proxy in-process, and checks the
//! bytes still allocated per parked connection. hyper's 8 KiB read buffer
//! must be gone: holding it (an empty `Bytes` still owns the whole buffer)
//! costs 8 KiB of address space and about 4 KiB of RSS per connection,
//! 40 MiB at 10,000 (docs/benchmarks.md).

use std::alloc::{GlobalAlloc, Layout, System};
use std::io::{Read, Write};
use std::sync::atomic::{AtomicIsize, Ordering};
use std::time::{Duration, Instant};

use livy_proxy::config::Config;
use livy_proxy::discovery::LeaderView;
use livy_proxy::http_proxy::HttpProxy;
use livy_proxy::node::{AddressDefaults, LivyNode};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// Bytes allocated and not yet freed, by anything in this process.
static LIVE: AtomicIsize = AtomicIsize::new(0);

struct Counting;

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        LIVE.fetch_add(l.size() as isize, Ordering::Relaxed);
        unsafe { System.alloc(l) }
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        LIVE.fetch_sub(l.size() as isize, Ordering::Relaxed);
        unsafe { System.dealloc(p, l) }
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, n: usize) -> *mut u8 {
        LIVE.fetch_add(n as isize - l.size() as isize, Ordering::Relaxed);
        unsafe { System.realloc(p, l, n) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

const CONNECTIONS: usize = 200;
/// Heap per parked connection allowed: measured at about 3.3 KiB (the
/// connection's task, its socket's registration, the service); with
/// hyper's read buffer it was above 11 KiB.
const BOUND: isize = 6 * 1024;

/// A Livy stand-in: one fixed JSON answer per request, keep-alive.
async fn livy() -> std::net::SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = vec![0u8; 4096];
                let mut got = Vec::new();
                loop {
                    let n = match s.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => n,
                    };
                    got.extend_from_slice(&buf[..n]);
                    while let Some(end) = got.windows(4).position(|w| w == b"\r\n\r\n") {
                        got.drain(..end + 4);
                        let answer = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 2\r\n\r\n{}";
                        if s.write_all(answer).await.is_err() {
                            return;
                        }
                    }
                }
            });
        }
    });
    addr
}

/// One request on `s`, its answer read whole.
fn ask(s: &mut std::net::TcpStream) {
    s.write_all(b"GET /sessions HTTP/1.1\r\nHost: livy\r\n\r\n")
        .unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 1024];
    while !got.ends_with(b"{}") {
        let n = s.read(&mut buf).unwrap();
        assert!(n > 0, "closed: {:?}", String::from_utf8_lossy(&got));
        got.extend_from_slice(&buf[..n]);
    }
    assert!(got.starts_with(b"HTTP/1.1 200"), "{got:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_parked_connection_holds_no_read_buffer() {
    let livy = livy().await;
    let node =
        LivyNode::parse(&format!("livy-1=http://{livy}"), AddressDefaults::default()).unwrap();
    // Idle connections are closed after the header timeout: far past the
    // measurement, so that what is measured is parked, not closed.
    let config = Config::from_args([
        "livy-proxy",
        "--node",
        &format!("livy-1=http://{livy}"),
        "--client-header-timeout",
        "300s",
    ])
    .unwrap();
    let (_leader, rx) = tokio::sync::watch::channel(LeaderView::fixed(Some(node.clone()), 1));
    let proxy = HttpProxy::new(config.http.clone(), std::sync::Arc::new(vec![node]), rx);
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let stop = CancellationToken::new();
    tokio::spawn(proxy.serve(listener, stop.clone()));

    // One request first, so that the pool's connection to Livy and
    // everything made once is not counted against the clients.
    let clients = tokio::task::spawn_blocking(move || {
        let mut first = std::net::TcpStream::connect(addr).unwrap();
        first
            .set_read_timeout(Some(Duration::from_secs(30)))
            .unwrap();
        ask(&mut first);
        std::thread::sleep(Duration::from_millis(500));
        let before = LIVE.load(Ordering::Relaxed);
        let mut all = vec![first];
        for _ in 0..CONNECTIONS {
            let mut s = std::net::TcpStream::connect(addr).unwrap();
            s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
            ask(&mut s);
            all.push(s);
        }
        (before, all)
    });
    let (before, open) = clients.await.unwrap();

    // Parked 100 ms after their last byte; waited for, within a generous
    // deadline.
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut per_connection;
    loop {
        per_connection = (LIVE.load(Ordering::Relaxed) - before) / CONNECTIONS as isize;
        if per_connection < BOUND || Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        per_connection < BOUND,
        "{per_connection} bytes of heap per parked connection (bound {BOUND})"
    );
    // Parked, not closed: each still serves on its socket.
    tokio::task::spawn_blocking(move || open.into_iter().for_each(|mut s| ask(&mut s)))
        .await
        .unwrap();
    stop.cancel();
}
