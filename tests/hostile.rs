//! Hostile clients all at once against the livy-proxy binary: slowloris
//! (request heads sent a byte at a time), stalled bodies (HTTP/1.1 and
//! streams of one h2c connection, each sending all but the end of what it
//! declared), and slow uploads (a byte at a time, larger than the replay
//! buffer). Meanwhile a normal client must keep being answered, and the
//! proxy's resident memory must stay within its body budget plus a margin.
//!
//! Every loop is bounded in count and time; the proxy is a child process
//! killed on drop, the fake Livy and the clients are tasks of this test.

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::Proxy;
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};

/// The proxy's resident set, in KiB (Linux `/proc`).
fn rss_kib(pid: i32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// A Livy stand-in that reads each request whole and answers `{}`.
async fn fake_livy() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.41:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(|req: Request<Incoming>| async move {
                    req.into_body().collect().await?;
                    Ok::<_, hyper::Error>(Response::new(Full::new(Bytes::from_static(b"{}"))))
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    addr
}

/// Sends a request head a byte at a time, up to `bytes` of it.
async fn slowloris(proxy: SocketAddr, bytes: usize) {
    let Ok(mut c) = TcpStream::connect(proxy).await else {
        return;
    };
    let head = b"GET /sessions HTTP/1.1\r\nHost: x\r\nX-Slow: ";
    if c.write_all(head).await.is_err() {
        return;
    }
    for _ in 0..bytes {
        tokio::time::sleep(Duration::from_millis(300)).await;
        if c.write_all(b"a").await.is_err() {
            return;
        }
    }
}

/// Declares `declared` bytes, sends all but the last, and goes silent.
async fn stalled_body(proxy: SocketAddr, declared: usize, hold: Duration) {
    let Ok(mut c) = TcpStream::connect(proxy).await else {
        return;
    };
    let head = format!("POST /sessions HTTP/1.1\r\nHost: x\r\nContent-Length: {declared}\r\n\r\n");
    let _ = c.write_all(head.as_bytes()).await;
    let _ = c.write_all(&vec![b'x'; declared - 1]).await;
    tokio::time::sleep(hold).await;
}

/// Many streams on one h2c connection, each declaring `declared` bytes and
/// sending half.
async fn stalled_h2_streams(proxy: SocketAddr, streams: usize, declared: usize, hold: Duration) {
    let Ok(tcp) = TcpStream::connect(proxy).await else {
        return;
    };
    let Ok((client, conn)) = h2::client::handshake(tcp).await else {
        return;
    };
    let conn = tokio::spawn(conn);
    let mut open = Vec::new();
    let mut client = client;
    for _ in 0..streams {
        let Ok(ready) = client.ready().await else {
            break;
        };
        client = ready;
        let req = Request::post(format!("http://{proxy}/sessions"))
            .header("content-length", declared)
            .body(())
            .unwrap();
        let Ok((response, mut body)) = client.send_request(req, false) else {
            break;
        };
        let _ = body.send_data(Bytes::from(vec![b'x'; declared / 2]), false);
        open.push((response, body));
    }
    tokio::time::sleep(hold).await;
    drop(open);
    conn.abort();
}

/// Uploads `declared` bytes a byte at a time, `bytes` of them at most.
async fn slow_upload(proxy: SocketAddr, declared: usize, bytes: usize) {
    let Ok(mut c) = TcpStream::connect(proxy).await else {
        return;
    };
    let head = format!("POST /sessions HTTP/1.1\r\nHost: x\r\nContent-Length: {declared}\r\n\r\n");
    if c.write_all(head.as_bytes()).await.is_err() {
        return;
    }
    for _ in 0..bytes {
        if c.write_all(b"x").await.is_err() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn normal_clients_are_served_and_memory_stays_bounded_under_hostile_clients() {
    let livy = fake_livy().await;
    let proxy = Proxy::start(&[
        "--node".to_string(),
        format!("livy-1=http://{livy}"),
        "--probe-interval".into(),
        "200ms".into(),
        "--hold-timeout".into(),
        "3s".into(),
        "--client-header-timeout".into(),
        "2s".into(),
        "--client-body-timeout".into(),
        "30s".into(),
        "--max-buffered-bodies".into(),
        "16MiB".into(),
        "--max-upstream-connections".into(),
        "16".into(),
        "--worker-threads".into(),
        "2".into(),
    ]);
    let addr = proxy.addr();
    let url = format!("{}/sessions", proxy.url());
    let normal = |method: &'static str, body: &'static [u8]| {
        let url = url.clone();
        async move {
            tokio::time::timeout(
                Duration::from_secs(10),
                common::http_request(method, &url, &[], body.to_vec()),
            )
            .await
            .map(|(status, _, _)| status.as_u16())
            .unwrap_or(0)
        }
    };
    // Discovery finds the fake by probing; then a few requests warm up the
    // proxy's allocator before the baseline is taken.
    let found = Instant::now();
    while normal("GET", b"").await != 200 {
        assert!(
            found.elapsed() < Duration::from_secs(30),
            "{}",
            proxy.logs()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for _ in 0..20 {
        assert_eq!(normal("POST", b"{\"kind\":\"spark\"}").await, 200);
    }
    let baseline = rss_kib(proxy.pid());

    let hold = Duration::from_secs(14);
    let mut attackers = tokio::task::JoinSet::new();
    for _ in 0..50 {
        attackers.spawn(slowloris(addr, 40));
    }
    for _ in 0..60 {
        attackers.spawn(stalled_body(addr, 1_000_000, hold));
    }
    attackers.spawn(stalled_h2_streams(addr, 40, 100_000, hold));
    for _ in 0..10 {
        attackers.spawn(slow_upload(addr, 10_000_000, 60));
    }

    // The normal client, for as long as the attack lasts.
    let mut peak = baseline;
    let mut served = 0;
    let attack = Instant::now();
    while attack.elapsed() < Duration::from_secs(12) {
        let get = normal("GET", b"").await;
        let post = normal("POST", b"{\"code\":\"1+1\"}").await;
        assert_eq!(
            (get, post),
            (200, 200),
            "a normal client must be answered within 10 s while under attack"
        );
        served += 2;
        peak = peak.max(rss_kib(proxy.pid()));
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    attackers.abort_all();
    while attackers.join_next().await.is_some() {}
    assert!(served >= 10, "only {served} normal requests in 12 s");
    let grown_mib = peak.saturating_sub(baseline) / 1024;
    eprintln!("RSS baseline {baseline} KiB, peak {peak} KiB (+{grown_mib} MiB), {served} served");
    // Measured: about +55 MiB with the budget (16 MiB of bodies, the rest
    // hyper's per-connection buffers and the allocator), about +200 MiB
    // without it.
    assert!(
        grown_mib < 100,
        "the proxy grew by {grown_mib} MiB with a 16 MiB body budget"
    );
}
