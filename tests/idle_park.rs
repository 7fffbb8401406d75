//! Idle HTTP/1.1 client connections are parked (hyper's buffers freed,
//! `http_proxy::park`) and served again on the same socket: what the
//! client sees must not change. Raw sockets, so the test knows the
//! requests share one connection and can stop in the middle of a head.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::{Proxy, SimCluster, wait_until};

const DEADLINE: Duration = Duration::from_secs(30);
/// Longer than `park::PARK_AFTER`, so the connection is parked.
const IDLE: Duration = Duration::from_millis(1500);
const TRACE: (&str, &str) = ("RUST_LOG", "info,livy_proxy::http_proxy::park=trace");

/// Reads one response with a Content-Length body from `s`.
fn read_response(s: &mut TcpStream) -> String {
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    let started = Instant::now();
    loop {
        if let Some(end) = got.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&got[..end]).to_lowercase();
            let len: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .map(|v| v.trim().parse().unwrap())
                .unwrap_or(0);
            if got.len() >= end + 4 + len {
                return String::from_utf8_lossy(&got[..end + 4 + len]).into_owned();
            }
        }
        assert!(started.elapsed() < DEADLINE, "no whole response: {got:?}");
        let n = s.read(&mut buf).expect("read");
        assert!(
            n > 0,
            "connection closed after {:?}",
            String::from_utf8_lossy(&got)
        );
        got.extend_from_slice(&buf[..n]);
    }
}

fn connect(proxy: &Proxy) -> TcpStream {
    let s = TcpStream::connect(proxy.addr()).unwrap();
    s.set_read_timeout(Some(DEADLINE)).unwrap();
    s
}

fn parked(proxy: &Proxy) -> usize {
    proxy.logs().matches("connection parked while idle").count()
}

#[test]
fn a_parked_connection_serves_the_next_request_on_the_same_socket() {
    let plan = SimCluster::plan(1);
    let node = plan.node_arg(0);
    let _cluster = plan.start_static(0);
    let proxy = Proxy::start_with_env(&["--node", &node], &[TRACE]);
    let mut s = connect(&proxy);
    for i in 0..3 {
        s.write_all(b"GET /version HTTP/1.1\r\nHost: livy\r\n\r\n")
            .unwrap();
        let r = read_response(&mut s);
        assert!(r.starts_with("HTTP/1.1 200"), "request {i}: {r}");
        std::thread::sleep(IDLE);
        assert!(
            wait_until(DEADLINE, || parked(&proxy) > i),
            "request {i}'s connection was not parked: {}",
            proxy.logs()
        );
    }
}

#[test]
fn a_head_cut_in_the_middle_by_the_park_is_completed_after_it() {
    let plan = SimCluster::plan(1);
    let node = plan.node_arg(0);
    let _cluster = plan.start_static(0);
    let proxy = Proxy::start_with_env(&["--node", &node], &[TRACE]);
    let mut s = connect(&proxy);
    s.write_all(b"GET /version HTTP/1.1\r\nHost: livy\r\n\r\n")
        .unwrap();
    assert!(read_response(&mut s).starts_with("HTTP/1.1 200"));
    // Half of the next head, then silence: hyper has these bytes when the
    // connection is parked, and must get them back.
    s.write_all(b"POST /sessions HTTP/1.1\r\nHost: li").unwrap();
    assert!(
        wait_until(DEADLINE, || parked(&proxy) >= 1),
        "not parked: {}",
        proxy.logs()
    );
    std::thread::sleep(IDLE);
    s.write_all(b"vy\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}")
        .unwrap();
    let r = read_response(&mut s);
    assert!(
        r.starts_with("HTTP/1.1 201") || r.starts_with("HTTP/1.1 200"),
        "the completed request: {r}"
    );
}

#[test]
fn a_parked_connection_is_still_closed_by_the_header_timeout() {
    let plan = SimCluster::plan(1);
    let node = plan.node_arg(0);
    let _cluster = plan.start_static(0);
    let proxy = Proxy::start_with_env(
        &["--node", &node, "--client-header-timeout", "3s"],
        &[TRACE],
    );
    let mut s = connect(&proxy);
    s.write_all(b"GET /version HTTP/1.1\r\nHost: livy\r\n\r\n")
        .unwrap();
    assert!(read_response(&mut s).starts_with("HTTP/1.1 200"));
    // Parked, then closed by the proxy (read returns end of stream) once
    // the header timeout is over, well before the read timeout.
    let mut buf = [0u8; 16];
    let n = s.read(&mut buf).expect("closed, not timed out");
    assert_eq!(n, 0, "the proxy closes the idle connection");
    assert!(parked(&proxy) >= 1, "it was parked first: {}", proxy.logs());
}

#[test]
fn a_head_trickled_across_parks_is_cut_off_by_the_header_timeout() {
    let plan = SimCluster::plan(1);
    let node = plan.node_arg(0);
    let _cluster = plan.start_static(0);
    let proxy = Proxy::start_with_env(
        &["--node", &node, "--client-header-timeout", "2s"],
        &[TRACE],
    );
    // One request served first: the timeout counts from its answer, on a
    // kept-alive connection, not only from the connect.
    let mut s = connect(&proxy);
    s.write_all(b"GET /version HTTP/1.1\r\nHost: livy\r\n\r\n")
        .unwrap();
    assert!(read_response(&mut s).starts_with("HTTP/1.1 200"));
    // Then a head a byte every 250 ms (PARK_AFTER is 100 ms), for up to
    // 60 s: the connection must be closed long before, with no answer.
    s.write_all(b"GET /version HTTP/1.1\r\nX-Slow: ").unwrap();
    s.set_nonblocking(true).unwrap();
    let started = Instant::now();
    let closed = loop {
        std::thread::sleep(Duration::from_millis(250));
        let mut buf = [0u8; 64];
        match s.read(&mut buf) {
            Ok(0) => break true,
            Ok(n) => panic!("answered: {:?}", String::from_utf8_lossy(&buf[..n])),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(_) => break true,
        }
        if s.write_all(b"a").is_err() {
            break true;
        }
        if started.elapsed() > Duration::from_secs(60) {
            break false;
        }
    };
    assert!(closed, "a trickled head was let run for 60 s");
    // Parked once, with the head's first bytes kept: a new hyper connection
    // before its first request is not parked again, and only the header
    // timeout, still counting from the answer, ends it.
    assert!(
        parked(&proxy) >= 1,
        "it parked in between: {}",
        proxy.logs()
    );
}

#[test]
fn a_drain_closes_parked_connections_and_the_proxy_exits() {
    let plan = SimCluster::plan(1);
    let node = plan.node_arg(0);
    let _cluster = plan.start_static(0);
    let mut proxy = Proxy::start_with_env(&["--node", &node], &[TRACE]);
    let mut idle: Vec<TcpStream> = (0..20).map(|_| connect(&proxy)).collect();
    for s in &mut idle {
        s.write_all(b"GET /version HTTP/1.1\r\nHost: livy\r\n\r\n")
            .unwrap();
        assert!(read_response(s).starts_with("HTTP/1.1 200"));
    }
    assert!(
        wait_until(DEADLINE, || parked(&proxy) >= 20),
        "not all parked: {}",
        proxy.logs()
    );
    proxy.signal(libc::SIGTERM);
    assert_eq!(proxy.wait_exit(DEADLINE), Some(0), "a clean drain");
    for s in &mut idle {
        let mut buf = [0u8; 16];
        assert_eq!(s.read(&mut buf).unwrap_or(0), 0, "closed by the drain");
    }
}
