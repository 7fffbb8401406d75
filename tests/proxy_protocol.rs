//! PROXY protocol on both listeners, in-process: clients bound to their own
//! loopback addresses, 127.0.0.41 (in `proxy-protocol-from`) and 127.0.0.42
//! (not), behind which the "real" client 203.0.113.7 hides. The HTTP proxy
//! forwards to a fake Livy that records `X-Forwarded-For`; the JDBC proxy
//! to a Thrift stand-in that echoes, so any header byte left in the stream
//! comes back.

mod tcp_common;

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use livy_proxy::discovery::LeaderView;
use livy_proxy::http_proxy::{HttpProxy, HttpSettings};
use livy_proxy::node::{AddressDefaults, LivyNode};
use livy_proxy::proxy_protocol::{ProxyProtocol, TrustedNetworks};
use livy_proxy::tcp_proxy::{TcpProxy, TcpSettings};
use tcp_common::Echo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// The balancer: its headers are believed.
const TRUSTED: &str = "127.0.0.41";
/// Anyone else.
const UNTRUSTED: &str = "127.0.0.42";

fn pp(timeout: Duration) -> ProxyProtocol {
    ProxyProtocol {
        from: TrustedNetworks::parse([format!("{TRUSTED}/32"), "::1".to_string()]).unwrap(),
        timeout,
    }
}

/// A connection to `to` from the loopback address `from`.
async fn connect_from(from: &str, to: SocketAddr) -> TcpStream {
    let socket = TcpSocket::new_v4().unwrap();
    socket.bind(format!("{from}:0").parse().unwrap()).unwrap();
    socket.connect(to).await.unwrap()
}

const V1_TCP4: &[u8] = b"PROXY TCP4 203.0.113.7 127.0.0.1 51234 8998\r\n";
const V1_TCP6: &[u8] = b"PROXY TCP6 2001:db8::7 ::1 51234 8998\r\n";
const V1_UNKNOWN: &[u8] = b"PROXY UNKNOWN\r\n";

fn v2(command: u8, family: u8, addresses: &[u8]) -> Vec<u8> {
    let mut h = b"\r\n\r\n\0\r\nQUIT\n".to_vec();
    h.push(0x20 | command);
    h.push(family);
    h.extend_from_slice(&(addresses.len() as u16).to_be_bytes());
    h.extend_from_slice(addresses);
    h
}

/// v2 PROXY, TCP over IPv4, from 203.0.113.7:51234.
fn v2_tcp4() -> Vec<u8> {
    v2(
        0x1,
        0x11,
        &[203, 0, 113, 7, 127, 0, 0, 1, 0xC8, 0x22, 0x23, 0x26],
    )
}

/// v2 PROXY, TCP over IPv6, from [2001:db8::7]:51234.
fn v2_tcp6() -> Vec<u8> {
    let mut a = "2001:db8::7"
        .parse::<std::net::Ipv6Addr>()
        .unwrap()
        .octets()
        .to_vec();
    a.extend_from_slice(&std::net::Ipv6Addr::LOCALHOST.octets());
    a.extend_from_slice(&[0xC8, 0x22, 0x23, 0x26]);
    v2(0x1, 0x21, &a)
}

/// v2 LOCAL, as a balancer's health check sends it.
fn v2_local() -> Vec<u8> {
    v2(0x0, 0x00, &[])
}

/// Reads until the proxy closes; the bytes that came, or `None` if the
/// connection stayed open for 20 s.
async fn read_until_closed(c: &mut TcpStream) -> Option<Vec<u8>> {
    let mut all = Vec::new();
    let mut buf = [0u8; 4096];
    tokio::time::timeout(Duration::from_secs(20), async {
        loop {
            match c.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => all.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await
    .ok()?;
    Some(all)
}

/// Log lines written while `f` runs (this test's thread only: the
/// runtime is current-thread, so the proxy's tasks log here too).
#[derive(Clone, Default)]
struct Logs(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Logs {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Logs {
    fn capture() -> (Logs, tracing::subscriber::DefaultGuard) {
        let logs = Logs::default();
        let writer = logs.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_max_level(tracing::Level::DEBUG)
            .with_ansi(false)
            .with_writer(move || writer.clone())
            .finish();
        (logs, tracing::subscriber::set_default(subscriber))
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).to_string()
    }
}

// ---------------------------------------------------------------- HTTP

/// A fake Livy server that answers 200 and records each request's
/// `X-Forwarded-For`.
struct Livy {
    node: LivyNode,
    forwarded_for: Arc<Mutex<Vec<String>>>,
    stop: CancellationToken,
}

impl Livy {
    async fn start() -> Livy {
        let listener = TcpListener::bind("127.0.0.43:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let forwarded_for = Arc::new(Mutex::new(Vec::new()));
        let stop = CancellationToken::new();
        let (seen, stop2) = (forwarded_for.clone(), stop.clone());
        tokio::spawn(async move {
            loop {
                let (stream, _) = tokio::select! {
                    _ = stop2.cancelled() => return,
                    a = listener.accept() => a.unwrap(),
                };
                let seen = seen.clone();
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
                        let seen = seen.clone();
                        async move {
                            let xff = req
                                .headers()
                                .get("x-forwarded-for")
                                .and_then(|v| v.to_str().ok())
                                .unwrap_or("(none)")
                                .to_string();
                            seen.lock().unwrap().push(xff);
                            let _ = req.into_body().collect().await;
                            Ok::<_, hyper::Error>(Response::new(Full::new(Bytes::from_static(
                                b"{\"sessions\":[]}",
                            ))))
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        Livy {
            node: LivyNode::parse(&format!("livy-1=http://{addr}"), AddressDefaults::default())
                .unwrap(),
            forwarded_for,
            stop,
        }
    }

    /// The `X-Forwarded-For` of every request so far, emptying the list.
    fn take(&self) -> Vec<String> {
        std::mem::take(&mut *self.forwarded_for.lock().unwrap())
    }
}

impl Drop for Livy {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// An HTTP proxy in front of `livy`, until the token is dropped.
struct Http {
    addr: SocketAddr,
    proxy: HttpProxy,
    _leader: watch::Sender<LeaderView>,
    stop: CancellationToken,
}

impl Drop for Http {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

fn http_settings(proxy_protocol: ProxyProtocol) -> HttpSettings {
    HttpSettings {
        listen: "127.0.0.1:0".parse().unwrap(),
        max_requests_in_flight: 4096,
        max_client_connections: 10_000,
        hold_timeout: Duration::from_secs(5),
        upstream_timeout: Duration::from_secs(30),
        client_header_timeout: Duration::from_secs(30),
        connect_timeout: Duration::from_secs(2),
        max_replay_body: 1024,
        trust_forwarded: false,
        strip_headers: Vec::new(),
        emit_forwarded: false,
        public_url: None,
        retry_after: Duration::from_secs(5),
        max_upstream_connections: 16,
        client_body_timeout: Duration::from_secs(30),
        client_send_timeout: Duration::from_secs(60),
        max_buffered_bodies: 64 * 1024 * 1024,
        max_streaming_uploads: 4,
        h2_max_concurrent_streams: 100,
        h2_max_header_list_size: 64 * 1024,
        proxy_protocol,
        client_identity_header: None,
        tls: None,
        tls_listen: None,
    }
}

async fn http_proxy(livy: &Livy, proxy_protocol: ProxyProtocol) -> Http {
    let settings = http_settings(proxy_protocol);
    let (tx, rx) = watch::channel(LeaderView::fixed(Some(livy.node.clone()), 1));
    let proxy = HttpProxy::new(settings, Arc::new(vec![livy.node.clone()]), rx);
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let stop = CancellationToken::new();
    tokio::spawn(proxy.clone().serve(listener, stop.clone()));
    Http {
        addr,
        proxy,
        _leader: tx,
        stop,
    }
}

const GET: &[u8] = b"GET /sessions HTTP/1.1\r\nHost: livy\r\n\r\n";
const GET_CLOSE: &[u8] = b"GET /sessions HTTP/1.1\r\nHost: livy\r\nConnection: close\r\n\r\n";

/// One request from `from`, `header` and the request in one write; the
/// status line of the answer.
async fn get_from(from: &str, proxy: SocketAddr, header: &[u8]) -> String {
    let mut c = connect_from(from, proxy).await;
    c.write_all(&[header, GET_CLOSE].concat()).await.unwrap();
    let answer = read_until_closed(&mut c).await.expect("an answer");
    String::from_utf8_lossy(&answer)
        .lines()
        .next()
        .unwrap_or("(nothing)")
        .to_string()
}

#[tokio::test]
async fn http_v1_from_a_trusted_source_names_the_client_in_x_forwarded_for() {
    let livy = Livy::start().await;
    let s = http_proxy(&livy, pp(Duration::from_secs(5))).await;
    let (logs, _guard) = Logs::capture();
    for (header, client) in [
        (V1_TCP4, "203.0.113.7"),
        (V1_TCP6, "2001:db8::7"),
        // UNKNOWN, and no header at all: the balancer's own connection
        // (a health check, an operator inside the trusted network).
        (V1_UNKNOWN, TRUSTED),
        (b"", TRUSTED),
    ] {
        let status = get_from(TRUSTED, s.addr, header).await;
        assert_eq!(
            status,
            "HTTP/1.1 200 OK",
            "{:?}",
            String::from_utf8_lossy(header)
        );
        assert_eq!(
            livy.take(),
            [client],
            "{:?}",
            String::from_utf8_lossy(header)
        );
    }
    // The access log's client is the header's, port included.
    let text = logs.text();
    let access: Vec<&str> = text.lines().filter(|l| l.contains(" access:")).collect();
    assert_eq!(access.len(), 4, "{text}");
    assert!(access[0].contains("client=203.0.113.7:51234"), "{text}");
    assert!(access[1].contains("client=[2001:db8::7]:51234"), "{text}");
    assert!(access[3].contains(&format!("client={TRUSTED}:")), "{text}");
    // Every request on a kept-alive connection is the header's client, and
    // a header split across two writes is waited for.
    let mut c = connect_from(TRUSTED, s.addr).await;
    c.write_all(&V1_TCP4[..20]).await.unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;
    c.write_all(&[&V1_TCP4[20..], GET].concat()).await.unwrap();
    let mut buf = [0u8; 4096];
    let n = c.read(&mut buf).await.unwrap();
    assert!(buf[..n].starts_with(b"HTTP/1.1 200"));
    c.write_all(GET_CLOSE).await.unwrap();
    read_until_closed(&mut c).await.unwrap();
    assert_eq!(livy.take(), ["203.0.113.7", "203.0.113.7"]);
}

#[tokio::test]
async fn http_v2_from_a_trusted_source_names_the_client_and_local_is_the_balancer() {
    let livy = Livy::start().await;
    let s = http_proxy(&livy, pp(Duration::from_secs(5))).await;
    for (header, client) in [
        (v2_tcp4(), "203.0.113.7"),
        (v2_tcp6(), "2001:db8::7"),
        (v2_local(), TRUSTED),
    ] {
        let status = get_from(TRUSTED, s.addr, &header).await;
        assert_eq!(status, "HTTP/1.1 200 OK", "{header:?}");
        assert_eq!(livy.take(), [client], "{header:?}");
    }
    // h2c behind a v2 header: the sniff sees the HTTP/2 preface at the
    // first byte left, so the header was consumed exactly.
    let mut c = connect_from(TRUSTED, s.addr).await;
    c.write_all(&v2_tcp4()).await.unwrap();
    let (mut send, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(c))
            .await
            .unwrap();
    tokio::spawn(conn);
    let req = Request::get("http://livy/sessions")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let resp = send.send_request(req).await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(livy.take(), ["203.0.113.7"]);
}

#[tokio::test]
async fn http_header_from_an_untrusted_source_is_refused_unanswered() {
    let livy = Livy::start().await;
    let s = http_proxy(&livy, pp(Duration::from_secs(5))).await;
    let (logs, _guard) = Logs::capture();
    for header in [V1_TCP4.to_vec(), v2_tcp4()] {
        let mut c = connect_from(UNTRUSTED, s.addr).await;
        c.write_all(&[&header[..], GET_CLOSE].concat())
            .await
            .unwrap();
        let answer = read_until_closed(&mut c).await.expect("closed");
        assert!(
            answer.is_empty(),
            "closed without an answer: {:?}",
            String::from_utf8_lossy(&answer)
        );
    }
    assert!(livy.take().is_empty(), "nothing forwarded");
    let text = logs.text();
    assert_eq!(
        text.matches("connection refused (PROXY protocol)").count(),
        2,
        "{text}"
    );
    assert!(text.contains(UNTRUSTED), "{text}");
    // The same source without a header is an ordinary client.
    assert_eq!(get_from(UNTRUSTED, s.addr, b"").await, "HTTP/1.1 200 OK");
    assert_eq!(livy.take(), [UNTRUSTED]);
}

#[tokio::test]
async fn http_truncated_header_from_a_trusted_source_is_closed_after_the_timeout() {
    let livy = Livy::start().await;
    // client-header-timeout is 30 s: only proxy-protocol-timeout can close
    // these within the test's bound.
    let s = http_proxy(&livy, pp(Duration::from_millis(300))).await;
    for partial in [&V1_TCP4[..24], &v2_tcp4()[..20], &v2_tcp4()[..8]] {
        let started = Instant::now();
        let mut c = connect_from(TRUSTED, s.addr).await;
        c.write_all(partial).await.unwrap();
        let answer = read_until_closed(&mut c).await;
        let waited = started.elapsed();
        assert_eq!(answer, Some(Vec::new()), "closed without an answer");
        assert!(
            waited >= Duration::from_millis(250) && waited < Duration::from_secs(10),
            "closed after {waited:?}"
        );
    }
    assert!(livy.take().is_empty());
}

// ---------------------------------------------------------------- JDBC

/// What a JDBC client sends first (a SASL PLAIN START, then bytes that look
/// like PROXY headers: data, to be relayed as they are).
const THRIFT: &[u8] =
    b"\x01\x00\x00\x00\x05PLAIN\x02\x00\x00\x00\x0fPROXY UNKNOWN\r\n\r\n\r\n\0\r\nQUIT\n";

async fn jdbc_proxy(echo: &Echo, proxy_protocol: ProxyProtocol) -> tcp_common::Setup {
    let mut settings = tcp_common::settings(Duration::from_secs(5));
    settings.proxy_protocol = proxy_protocol;
    tcp_common::setup(vec![echo.node.clone()], Some(&echo.node), settings).await
}

/// Sends `first` (in one write) and then [`THRIFT`] from `from`; what
/// comes back, exactly as many bytes as [`THRIFT`].
async fn echoed_from(from: &str, proxy: SocketAddr, first: &[u8]) -> Vec<u8> {
    let mut c = connect_from(from, proxy).await;
    c.write_all(&[first, THRIFT].concat()).await.unwrap();
    let mut back = vec![0u8; THRIFT.len()];
    tokio::time::timeout(Duration::from_secs(20), c.read_exact(&mut back))
        .await
        .expect("echo in time")
        .expect("echo");
    back
}

#[tokio::test]
async fn jdbc_headers_from_a_trusted_source_are_consumed_and_the_stream_arrives_intact() {
    let echo = Echo::start("livy-1", "127.0.0.44").await;
    let s = jdbc_proxy(&echo, pp(Duration::from_secs(5))).await;
    let (logs, _guard) = Logs::capture();
    for header in [
        V1_TCP4.to_vec(),
        V1_UNKNOWN.to_vec(),
        v2_tcp4(),
        v2_tcp6(),
        v2_local(),
        Vec::new(),
    ] {
        assert_eq!(
            echoed_from(TRUSTED, s.addr, &header).await,
            THRIFT,
            "{header:?}"
        );
    }
    assert_eq!(echo.accepted.load(Ordering::SeqCst), 6);
    // The header's client is the connection's peer in the log.
    let text = logs.text();
    let forwarded: Vec<&str> = text
        .lines()
        .filter(|l| l.contains("JDBC connection forwarded"))
        .collect();
    assert_eq!(forwarded.len(), 6, "{text}");
    assert!(forwarded[0].contains("peer=203.0.113.7:51234"), "{text}");
    assert!(forwarded[3].contains("peer=[2001:db8::7]:51234"), "{text}");
    assert!(forwarded[4].contains(&format!("peer={TRUSTED}:")), "{text}");
    // A header written in pieces (inside the signature, inside the fixed
    // part, then the addresses) is waited for, and the Thrift bytes after.
    let mut c = connect_from(TRUSTED, s.addr).await;
    let h = v2_tcp4();
    c.write_all(&h[..5]).await.unwrap();
    tokio::time::sleep(Duration::from_millis(30)).await;
    c.write_all(&h[5..17]).await.unwrap();
    tokio::time::sleep(Duration::from_millis(30)).await;
    c.write_all(&h[17..]).await.unwrap();
    tokio::time::sleep(Duration::from_millis(30)).await;
    c.write_all(THRIFT).await.unwrap();
    let mut back = vec![0u8; THRIFT.len()];
    tokio::time::timeout(Duration::from_secs(20), c.read_exact(&mut back))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(back, THRIFT);
}

#[tokio::test]
async fn jdbc_header_from_an_untrusted_source_is_refused_and_nothing_forwarded() {
    let echo = Echo::start("livy-1", "127.0.0.44").await;
    let s = jdbc_proxy(&echo, pp(Duration::from_secs(5))).await;
    let (logs, _guard) = Logs::capture();
    for header in [V1_TCP4.to_vec(), v2_tcp4()] {
        let mut c = connect_from(UNTRUSTED, s.addr).await;
        c.write_all(&[&header[..], THRIFT].concat()).await.unwrap();
        assert_eq!(read_until_closed(&mut c).await, Some(Vec::new()));
    }
    assert_eq!(echo.accepted.load(Ordering::SeqCst), 0, "nothing forwarded");
    let text = logs.text();
    assert_eq!(
        text.matches("connection refused (PROXY protocol)").count(),
        2,
        "{text}"
    );
    // Without a header it is an ordinary client.
    assert_eq!(echoed_from(UNTRUSTED, s.addr, b"").await, THRIFT);
    assert_eq!(echo.accepted.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn jdbc_truncated_header_from_a_trusted_source_is_closed_after_the_timeout() {
    let echo = Echo::start("livy-1", "127.0.0.44").await;
    let s = jdbc_proxy(&echo, pp(Duration::from_millis(300))).await;
    for partial in [&V1_TCP4[..24], &v2_tcp4()[..20], &v2_tcp4()[..8]] {
        let started = Instant::now();
        let mut c = connect_from(TRUSTED, s.addr).await;
        c.write_all(partial).await.unwrap();
        let answer = read_until_closed(&mut c).await;
        let waited = started.elapsed();
        assert_eq!(answer, Some(Vec::new()), "closed, nothing echoed");
        assert!(
            waited >= Duration::from_millis(250) && waited < Duration::from_secs(10),
            "closed after {waited:?}"
        );
    }
    assert_eq!(
        echo.accepted.load(Ordering::SeqCst),
        0,
        "no upstream opened"
    );
}

// ---------------------------------------------------------------- reload

#[tokio::test]
async fn proxy_protocol_keys_are_live_on_both_listeners() {
    // HTTP: off at start, so a header is the request line hyper refuses;
    // once the settings are replaced (a reload), the next connection's
    // header is read.
    let livy = Livy::start().await;
    let s = http_proxy(&livy, ProxyProtocol::default()).await;
    assert_eq!(
        get_from(TRUSTED, s.addr, V1_TCP4).await,
        "HTTP/1.1 400 Bad Request"
    );
    s.proxy
        .update_settings(http_settings(pp(Duration::from_secs(5))));
    assert_eq!(get_from(TRUSTED, s.addr, V1_TCP4).await, "HTTP/1.1 200 OK");
    assert_eq!(livy.take(), ["203.0.113.7"]);
    s.proxy
        .update_settings(http_settings(ProxyProtocol::default()));
    assert_eq!(get_from(TRUSTED, s.addr, b"").await, "HTTP/1.1 200 OK");
    assert_eq!(livy.take(), [TRUSTED]);

    // JDBC: off at start, so the header is relayed as data (and echoed);
    // after the update it is consumed.
    let echo = Echo::start("livy-1", "127.0.0.44").await;
    let (_tx, rx) = watch::channel(LeaderView::fixed(Some(echo.node.clone()), 1));
    let tcp = TcpProxy::new(
        tcp_common::settings(Duration::from_secs(5)),
        Arc::new(vec![echo.node.clone()]),
        rx,
    );
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let stop = CancellationToken::new();
    tokio::spawn(tcp.clone().serve(listener, stop.clone()));
    let mut c = connect_from(TRUSTED, addr).await;
    c.write_all(V1_TCP4).await.unwrap();
    let mut back = vec![0u8; V1_TCP4.len()];
    c.read_exact(&mut back).await.unwrap();
    assert_eq!(back, V1_TCP4, "off: relayed as it came");
    tcp.update_settings(TcpSettings {
        proxy_protocol: pp(Duration::from_secs(5)),
        ..tcp_common::settings(Duration::from_secs(5))
    });
    assert_eq!(echoed_from(TRUSTED, addr, V1_TCP4).await, THRIFT);
    assert_eq!(echoed_from(TRUSTED, addr, &v2_tcp4()).await, THRIFT);
    stop.cancel();
}
