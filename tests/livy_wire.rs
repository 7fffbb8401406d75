//! How the proxy speaks HTTP/1.1 to Livy, byte for byte: every response
//! framing (length, chunked, until close, none), bodies streamed both ways,
//! interim responses, answers that arrive in pieces, broken answers, and
//! when a connection is reused. The Livy here is scripted at the TCP level so
//! the tests control the exact bytes and how they are split.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::Frame;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use livy_proxy::discovery::LeaderView;
use livy_proxy::http_proxy::{HttpProxy, HttpSettings};
use livy_proxy::node::{AddressDefaults, LivyNode};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// What a scripted Livy sends for one request: the pieces of its answer
/// (written with a short pause between them) and whether it then closes.
struct Answer {
    pieces: Vec<Vec<u8>>,
    close: bool,
}

impl Answer {
    fn whole(bytes: impl Into<Vec<u8>>) -> Answer {
        Answer {
            pieces: vec![bytes.into()],
            close: false,
        }
    }

    fn then_close(mut self) -> Answer {
        self.close = true;
        self
    }

    /// The same bytes, written `size` bytes at a time.
    fn in_pieces(bytes: &[u8], size: usize) -> Answer {
        Answer {
            pieces: bytes.chunks(size).map(<[u8]>::to_vec).collect(),
            close: false,
        }
    }
}

type Script = Arc<dyn Fn(&str) -> Answer + Send + Sync>;

/// A Livy scripted at the TCP level. Reads requests (a body only by its
/// `Content-Length`) and logs each as (connection number, request head).
struct ScriptedLivy {
    node: LivyNode,
    log: Arc<Mutex<Vec<(usize, String)>>>,
    stop: CancellationToken,
}

impl ScriptedLivy {
    async fn start(ip: &str, script: Script) -> ScriptedLivy {
        let listener = TcpListener::bind((ip, 0)).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let log = Arc::new(Mutex::new(Vec::new()));
        let stop = CancellationToken::new();
        let (log2, stop2) = (log.clone(), stop.clone());
        tokio::spawn(async move {
            for conn_no in 0.. {
                let (mut s, _) = tokio::select! {
                    _ = stop2.cancelled() => return,
                    a = listener.accept() => a.unwrap(),
                };
                let _ = s.set_nodelay(true);
                let (log, script, stop) = (log2.clone(), script.clone(), stop2.clone());
                tokio::spawn(async move {
                    let mut got = Vec::new();
                    let mut buf = vec![0u8; 8192];
                    loop {
                        let Some(end) = got.windows(4).position(|w| w == b"\r\n\r\n") else {
                            let n = tokio::select! {
                                _ = stop.cancelled() => return,
                                n = s.read(&mut buf) => n.unwrap_or(0),
                            };
                            if n == 0 {
                                return;
                            }
                            got.extend_from_slice(&buf[..n]);
                            continue;
                        };
                        let head: Vec<u8> = got.drain(..end + 4).collect();
                        let head = String::from_utf8_lossy(&head).into_owned();
                        let line = head.lines().next().unwrap_or("").to_string();
                        let length = head
                            .lines()
                            .find_map(|l| {
                                l.to_ascii_lowercase()
                                    .strip_prefix("content-length:")
                                    .and_then(|v| v.trim().parse::<usize>().ok())
                            })
                            .unwrap_or(0);
                        while got.len() < length {
                            let n = tokio::select! {
                                _ = stop.cancelled() => return,
                                n = s.read(&mut buf) => n.unwrap_or(0),
                            };
                            if n == 0 {
                                return;
                            }
                            got.extend_from_slice(&buf[..n]);
                        }
                        got.drain(..length);
                        log.lock().unwrap().push((conn_no, head));
                        let answer = script(&line);
                        for piece in &answer.pieces {
                            if s.write_all(piece).await.is_err() {
                                return;
                            }
                            if answer.pieces.len() > 1 {
                                tokio::time::sleep(Duration::from_millis(2)).await;
                            }
                        }
                        if answer.close {
                            return;
                        }
                    }
                });
            }
        });
        let node =
            LivyNode::parse(&format!("livy-w=http://{addr}"), AddressDefaults::default()).unwrap();
        ScriptedLivy { node, log, stop }
    }

    /// The connection number each request so far came on.
    fn connections(&self) -> Vec<usize> {
        self.log.lock().unwrap().iter().map(|(c, _)| *c).collect()
    }

    /// The request line of each request so far.
    fn request_lines(&self) -> Vec<String> {
        self.heads()
            .iter()
            .map(|h| h.lines().next().unwrap_or("").to_string())
            .collect()
    }

    /// The head of each request so far, as sent.
    fn heads(&self) -> Vec<String> {
        self.log
            .lock()
            .unwrap()
            .iter()
            .map(|(_, h)| h.clone())
            .collect()
    }
}

impl Drop for ScriptedLivy {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

struct Proxy {
    addr: SocketAddr,
    _leader: watch::Sender<LeaderView>,
    stop: CancellationToken,
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

async fn proxy_to(node: &LivyNode) -> Proxy {
    let settings = HttpSettings {
        listen: "127.0.0.1:0".parse().unwrap(),
        max_requests_in_flight: 4096,
        max_client_connections: 10_000,
        hold_timeout: Duration::from_secs(2),
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
        proxy_protocol: Default::default(),
        client_identity_header: None,
        tls: None,
        tls_listen: None,
    };
    let (tx, rx) = watch::channel(LeaderView::fixed(Some(node.clone()), 1));
    let proxy = HttpProxy::new(settings, Arc::new(vec![node.clone()]), rx);
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let stop = CancellationToken::new();
    tokio::spawn(proxy.serve(listener, stop.clone()));
    Proxy {
        addr,
        _leader: tx,
        stop,
    }
}

/// One request through the proxy on a new client connection: the status
/// and the whole body, or what went wrong reading it.
async fn request(
    proxy: &Proxy,
    method: &str,
    path: &str,
) -> (StatusCode, http::HeaderMap, Result<Bytes, String>) {
    try_request(proxy, method, path).await.unwrap()
}

/// As [`request`], or an error if no response head arrived at all.
async fn try_request(
    proxy: &Proxy,
    method: &str,
    path: &str,
) -> Result<(StatusCode, http::HeaderMap, Result<Bytes, String>), String> {
    let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    let req = Request::builder()
        .method(method)
        .uri(format!("http://{}{path}", proxy.addr))
        .body(Full::new(Bytes::new()))
        .unwrap();
    let resp = client.request(req).await.map_err(|e| format!("{e:?}"))?;
    let (parts, body) = resp.into_parts();
    let body = body
        .collect()
        .await
        .map(|c| c.to_bytes())
        .map_err(|e| e.to_string());
    Ok((parts.status, parts.headers, body))
}

fn pattern(len: usize) -> Vec<u8> {
    (0..len).map(|i| b'a' + (i % 26) as u8).collect()
}

/// `body` as a chunked message body: chunks of growing sizes, with a chunk
/// extension on one, and a trailer field.
fn chunked(body: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    let (mut at, mut size) = (0, 1);
    while at < body.len() {
        let n = size.min(body.len() - at);
        if size == 4 {
            out.extend_from_slice(format!("{n:X};name=value\r\n").as_bytes());
        } else {
            out.extend_from_slice(format!("{n:x}\r\n").as_bytes());
        }
        out.extend_from_slice(&body[at..at + n]);
        out.extend_from_slice(b"\r\n");
        at += n;
        size *= 4;
    }
    out.extend_from_slice(b"0\r\nX-Trailer: 1\r\n\r\n");
    out
}

const OK_HEAD: &str = "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n";

#[tokio::test]
async fn chunked_answer_is_relayed_intact_and_its_connection_reused() {
    let body = pattern(300_000);
    let wire = [
        format!("{OK_HEAD}Transfer-Encoding: chunked\r\n\r\n").into_bytes(),
        chunked(&body),
    ]
    .concat();
    let livy = ScriptedLivy::start(
        "127.0.0.41",
        Arc::new(move |_: &str| Answer::whole(wire.clone())),
    )
    .await;
    let proxy = proxy_to(&livy.node).await;
    let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    for _ in 0..2 {
        // `TE: trailers` lets hyper's server side pass trailers on, so a
        // proxy that relayed Livy's would show them here: they are dropped
        // (conn.rs), neither relayed nor turned into headers.
        let req = Request::builder()
            .uri(format!("http://{}/sessions/1/log", proxy.addr))
            .header("te", "trailers")
            .body(Full::new(Bytes::new()))
            .unwrap();
        let resp = client.request(req).await.unwrap();
        assert_eq!(resp.status(), 200);
        assert!(!resp.headers().contains_key("x-trailer"));
        let got = resp.into_body().collect().await.unwrap();
        assert!(got.trailers().is_none(), "trailers dropped");
        assert!(got.to_bytes() == body, "body relayed intact");
    }
    assert_eq!(livy.connections(), [0, 0], "one connection for both");
}

#[tokio::test]
async fn answer_arriving_in_small_pieces_is_parsed_whole() {
    // Pieces of 3 bytes split the status line, header lines, chunk-size
    // lines and the CRLFs after chunk data.
    let body = pattern(150);
    let wire = [
        format!("{OK_HEAD}Transfer-Encoding: chunked\r\n\r\n").into_bytes(),
        chunked(&body),
    ]
    .concat();
    let livy = ScriptedLivy::start(
        "127.0.0.42",
        Arc::new(move |_: &str| Answer::in_pieces(&wire, 3)),
    )
    .await;
    let proxy = proxy_to(&livy.node).await;
    for _ in 0..2 {
        let (status, _, got) = request(&proxy, "GET", "/sessions").await;
        assert_eq!(status, 200);
        assert_eq!(got.unwrap(), body);
    }
    assert_eq!(livy.connections(), [0, 0]);
}

#[tokio::test]
async fn large_answer_with_a_length_is_streamed_intact_and_its_connection_reused() {
    let body = pattern(3 << 20);
    let wire = [
        format!("{OK_HEAD}Content-Length: {}\r\n\r\n", body.len()).into_bytes(),
        body.clone(),
    ]
    .concat();
    let livy = ScriptedLivy::start(
        "127.0.0.43",
        Arc::new(move |_: &str| Answer::whole(wire.clone())),
    )
    .await;
    let proxy = proxy_to(&livy.node).await;
    for _ in 0..2 {
        let (status, headers, got) = request(&proxy, "GET", "/big").await;
        assert_eq!(status, 200);
        assert_eq!(headers["content-length"], body.len().to_string().as_str());
        assert!(got.unwrap() == body, "body relayed intact");
    }
    assert_eq!(livy.connections(), [0, 0]);
}

#[tokio::test]
async fn answer_delimited_by_close_is_relayed_and_its_connection_not_reused() {
    let livy = ScriptedLivy::start(
        "127.0.0.44",
        Arc::new(|line: &str| {
            if line.contains("/old") {
                // HTTP/1.0 style: no length, the end of the body is the close.
                Answer::whole("HTTP/1.0 200 OK\r\n\r\nuntil the end").then_close()
            } else {
                // Says close but lingers (keeps reading): only the header
                // keeps the proxy from sending the next request here.
                Answer::whole(format!(
                    "{OK_HEAD}Connection: close\r\nContent-Length: 2\r\n\r\nok"
                ))
            }
        }),
    )
    .await;
    let proxy = proxy_to(&livy.node).await;
    let (status, _, got) = request(&proxy, "GET", "/old").await;
    assert_eq!(status, 200);
    assert_eq!(got.unwrap(), "until the end");
    let (status, headers, got) = request(&proxy, "GET", "/close").await;
    assert_eq!(status, 200);
    assert_eq!(got.unwrap(), "ok");
    assert!(!headers.contains_key("connection") || headers["connection"] != "close");
    let (status, _, _) = request(&proxy, "GET", "/close").await;
    assert_eq!(status, 200);
    assert_eq!(livy.connections(), [0, 1, 2], "a new connection each time");
}

#[tokio::test]
async fn head_204_and_interim_answers_carry_no_body_and_keep_the_connection() {
    let livy = ScriptedLivy::start(
        "127.0.0.45",
        Arc::new(|line: &str| {
            if line.starts_with("HEAD") {
                // The length a GET would have, and no body.
                Answer::whole(format!("{OK_HEAD}Content-Length: 1234\r\n\r\n"))
            } else if line.contains("/gone") {
                Answer::whole("HTTP/1.1 204 No Content\r\n\r\n")
            } else {
                Answer::whole(format!(
                    "HTTP/1.1 100 Continue\r\n\r\n{OK_HEAD}Content-Length: 2\r\n\r\n{{}}"
                ))
            }
        }),
    )
    .await;
    let proxy = proxy_to(&livy.node).await;
    let (status, headers, got) = request(&proxy, "HEAD", "/sessions").await;
    assert_eq!(status, 200);
    assert_eq!(headers["content-length"], "1234");
    assert_eq!(got.unwrap(), "");
    let (status, _, got) = request(&proxy, "DELETE", "/gone").await;
    assert_eq!(status, 204);
    assert_eq!(got.unwrap(), "");
    let (status, _, got) = request(&proxy, "GET", "/sessions").await;
    assert_eq!(status, 200, "the 100 was skipped");
    assert_eq!(got.unwrap(), "{}");
    assert_eq!(livy.connections(), [0, 0, 0]);
}

#[tokio::test]
async fn broken_answers_give_502_and_their_connection_is_dropped() {
    let livy = ScriptedLivy::start(
        "127.0.0.46",
        Arc::new(|line: &str| {
            if line.contains("/garbage") {
                Answer::whole("I am not HTTP\r\n\r\n")
            } else if line.contains("/bad-length") {
                Answer::whole(format!("{OK_HEAD}Content-Length: 2, 3\r\n\r\nok"))
            } else if line.contains("/short") {
                Answer::whole(format!("{OK_HEAD}Content-Length: 1000\r\n\r\nonly this"))
                    .then_close()
            } else {
                Answer::whole(format!("{OK_HEAD}Content-Length: 2\r\n\r\nok"))
            }
        }),
    )
    .await;
    let proxy = proxy_to(&livy.node).await;
    // POST: not retried, so each broken answer is seen exactly once.
    for path in ["/garbage", "/bad-length"] {
        let (status, headers, got) = request(&proxy, "POST", path).await;
        assert_eq!(status, 502, "{path}");
        assert!(headers.contains_key("retry-after"));
        let v: serde_json::Value = serde_json::from_slice(&got.unwrap()).unwrap();
        assert!(v["msg"].as_str().unwrap().contains("Livy"), "{v}");
        assert_eq!(v["kind"], "upstream_failed", "{v}");
    }
    // A body cut short after its head: the client's response is cut short
    // too (before or after its head went out), never completed.
    match try_request(&proxy, "POST", "/short").await {
        Err(e) => assert!(e.contains("IncompleteMessage"), "{e}"),
        Ok((_, _, got)) => assert!(got.is_err(), "an incomplete body is an error: {got:?}"),
    }
    let (status, _, got) = request(&proxy, "GET", "/fine").await;
    assert_eq!(status, 200);
    assert_eq!(got.unwrap(), "ok");
    assert_eq!(
        livy.connections(),
        [0, 1, 2, 3],
        "no connection reused after a broken answer"
    );
}

/// A Livy (hyper's server) that answers with what it received: the framing
/// headers it saw and the body's length and checksum.
async fn echoing_livy(ip: &str) -> LivyNode {
    let listener = TcpListener::bind((ip, 0)).await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(|req: Request<hyper::body::Incoming>| async {
                    let header = |n: &str| {
                        req.headers()
                            .get(n)
                            .map(|v| v.to_str().unwrap_or("").to_string())
                            .unwrap_or_default()
                    };
                    let (te, cl) = (header("transfer-encoding"), header("content-length"));
                    let body = req.into_body().collect().await?.to_bytes();
                    let sum: u64 = body.iter().map(|b| *b as u64).sum();
                    let text = format!("te={te} cl={cl} len={} sum={sum}", body.len());
                    Ok::<_, hyper::Error>(hyper::Response::new(Full::new(Bytes::from(text))))
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    LivyNode::parse(&format!("livy-e=http://{addr}"), AddressDefaults::default()).unwrap()
}

#[tokio::test]
async fn streamed_request_bodies_arrive_intact_with_their_framing() {
    let node = echoing_livy("127.0.0.47").await;
    let proxy = proxy_to(&node).await;
    let payload = pattern(500_000);
    let sum: u64 = payload.iter().map(|b| *b as u64).sum();
    let client = Client::builder(TokioExecutor::new()).build_http();
    for with_length in [false, true] {
        // Sent in 10 KB pieces: larger than the replay limit, so streamed.
        let pieces: Vec<Result<Frame<Bytes>, std::io::Error>> = payload
            .chunks(10_000)
            .map(|c| Ok(Frame::data(Bytes::copy_from_slice(c))))
            .collect();
        let body = StreamBody::new(futures_util::stream::iter(pieces));
        let mut req = Request::builder()
            .method("POST")
            .uri(format!("http://{}/sessions", proxy.addr));
        if with_length {
            req = req.header("content-length", payload.len());
        }
        let resp = client.request(req.body(body).unwrap()).await.unwrap();
        assert_eq!(resp.status(), 200);
        let text = String::from_utf8(
            resp.into_body()
                .collect()
                .await
                .unwrap()
                .to_bytes()
                .to_vec(),
        )
        .unwrap();
        let framing = if with_length {
            format!("te= cl={}", payload.len())
        } else {
            "te=chunked cl=".to_string()
        };
        assert_eq!(text, format!("{framing} len={} sum={sum}", payload.len()));
    }
}

/// Writes `bytes` to the proxy on a new connection and reads until the
/// proxy closes it (the last request says `Connection: close`).
async fn raw_exchange(proxy: &Proxy, bytes: &[u8]) -> String {
    let mut c = tokio::net::TcpStream::connect(proxy.addr).await.unwrap();
    c.write_all(bytes).await.unwrap();
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(20), c.read_to_end(&mut out))
        .await
        .expect("the proxy answers and closes within 20 s")
        .unwrap();
    String::from_utf8_lossy(&out).into_owned()
}

#[tokio::test]
async fn absolute_form_target_with_an_empty_path_reaches_livy_in_origin_form() {
    let livy = ScriptedLivy::start(
        "127.0.0.48",
        Arc::new(|_: &str| Answer::whole(format!("{OK_HEAD}Content-Length: 2\r\n\r\nok"))),
    )
    .await;
    let proxy = proxy_to(&livy.node).await;
    let text = raw_exchange(
        &proxy,
        b"GET http://livy:8998?q=1 HTTP/1.1\r\nHost: livy:8998\r\n\r\n\
          GET http://livy:8998 HTTP/1.1\r\nHost: livy:8998\r\n\r\n\
          GET http://livy:8998/sessions?from=0 HTTP/1.1\r\nHost: livy:8998\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(text.matches("HTTP/1.1 200").count(), 3, "{text}");
    assert_eq!(
        livy.request_lines(),
        [
            "GET /?q=1 HTTP/1.1",
            "GET / HTTP/1.1",
            "GET /sessions?from=0 HTTP/1.1"
        ]
    );
}

#[tokio::test]
async fn livy_content_length_is_repaired_to_one_number_or_refused() {
    let livy = ScriptedLivy::start(
        "127.0.0.49",
        Arc::new(|line: &str| {
            let length = if line.contains("/list") {
                "Content-Length: 2, 2\r\n"
            } else if line.contains("/twice") {
                "Content-Length: 2\r\nContent-Length: 2\r\n"
            } else if line.contains("/plus") {
                "Content-Length: +2\r\n"
            } else if line.contains("/empty") {
                "Content-Length: \r\n"
            } else if line.contains("/letters") {
                "Content-Length: 2a\r\n"
            } else if line.contains("/differ") {
                "Content-Length: 2\r\nContent-Length: 3\r\n"
            } else {
                "Content-Length: 2\r\n"
            };
            Answer::whole(format!("{OK_HEAD}{length}\r\nok"))
        }),
    )
    .await;
    let proxy = proxy_to(&livy.node).await;
    for path in ["/list", "/twice"] {
        let (status, headers, got) = request(&proxy, "GET", path).await;
        assert_eq!(status, 200, "{path}");
        let lengths: Vec<_> = headers.get_all("content-length").iter().collect();
        assert_eq!(lengths, ["2"], "{path}: one field, the bare number");
        assert_eq!(got.unwrap(), "ok", "{path}");
    }
    // POST: not retried, so each broken answer is seen once.
    for path in ["/plus", "/empty", "/letters", "/differ"] {
        let (status, _, got) = request(&proxy, "POST", path).await;
        assert_eq!(status, 502, "{path}");
        let v: serde_json::Value = serde_json::from_slice(&got.unwrap()).unwrap();
        assert_eq!(v["kind"], "upstream_failed", "{path}: {v}");
        assert!(v["msg"].as_str().unwrap().contains("Content-Length"), "{v}");
    }
    // A HEAD answer's length is checked too, though no body follows it
    // (a HEAD is retried within the hold time, then refused the same way).
    let (status, _, _) = request(&proxy, "HEAD", "/plus").await;
    assert_eq!(status, 502, "HEAD /plus");
}

/// A response head of exactly `size` bytes (status line, a
/// `Content-Length: 2`, filler fields, the empty line), followed by `ok`.
fn answer_with_head_of(size: usize) -> Vec<u8> {
    let start = format!("{OK_HEAD}Content-Length: 2\r\n");
    const FIELDS: usize = 8;
    const PER_FIELD: usize = "X-Fill-0: \r\n".len();
    let filler = size - start.len() - 2 - FIELDS * PER_FIELD;
    let mut head = start.into_bytes();
    for i in 0..FIELDS {
        let n = filler / FIELDS + usize::from(i < filler % FIELDS);
        head.extend_from_slice(format!("X-Fill-{i}: {}\r\n", "v".repeat(n)).as_bytes());
    }
    head.extend_from_slice(b"\r\n");
    assert_eq!(head.len(), size);
    head.extend_from_slice(b"ok");
    head
}

#[tokio::test]
async fn livy_answer_heads_over_64_kib_are_refused_however_they_arrive() {
    // `/<head size>/<piece size, 0: whole>`
    let livy = ScriptedLivy::start(
        "127.0.0.50",
        Arc::new(|line: &str| {
            let path = line.split(' ').nth(1).unwrap_or("");
            let mut parts = path.trim_start_matches('/').split('/');
            let size: usize = parts.next().unwrap_or("").parse().unwrap_or(100);
            let piece: usize = parts.next().unwrap_or("").parse().unwrap_or(0);
            let wire = answer_with_head_of(size);
            if piece == 0 {
                Answer::whole(wire)
            } else {
                Answer::in_pieces(&wire, piece)
            }
        }),
    )
    .await;
    let proxy = proxy_to(&livy.node).await;
    // Each on one client connection (hyper's pool), kept alive, so the
    // answers share the proxy's connection to Livy until a refusal drops it.
    let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    let post = |path: String| {
        let client = client.clone();
        let url = format!("http://{}{path}", proxy.addr);
        async move {
            let req = Request::post(url).body(Full::new(Bytes::new())).unwrap();
            let resp = client.request(req).await.unwrap();
            let status = resp.status();
            let body = resp.into_body().collect().await.unwrap().to_bytes();
            (status, body)
        }
    };
    const LIMIT: usize = 64 * 1024;
    for (size, piece) in [
        (LIMIT, 0),
        (LIMIT, 4096),
        (60_000, 0),
        (LIMIT + 1, 0),
        (60_000, 0),
        (LIMIT + 1, 4096),
        (60_000, 0),
        (70_000, 0),
        (60_000, 0),
        (100_000, 0),
        (60_000, 0),
        (200_000, 0),
    ] {
        let (status, body) = post(format!("/{size}/{piece}")).await;
        let expected = if size <= LIMIT { 200 } else { 502 };
        assert_eq!(
            status,
            expected,
            "a {size}-byte head in pieces of {piece}: {}",
            String::from_utf8_lossy(&body)
        );
        if size > LIMIT {
            assert!(String::from_utf8_lossy(&body).contains("larger than 65536 bytes"));
        } else {
            assert_eq!(body, "ok");
        }
    }
}

#[tokio::test]
async fn h2c_repeated_content_length_reaches_livy_as_one_field() {
    let livy = ScriptedLivy::start(
        "127.0.0.52",
        Arc::new(|_: &str| Answer::whole(format!("{OK_HEAD}Content-Length: 2\r\n\r\nok"))),
    )
    .await;
    let proxy = proxy_to(&livy.node).await;
    // The same length twice: h2 lets it through (the values agree), but
    // HTTP/1.1 servers such as Jetty refuse two Content-Length lines.
    let h2c = Client::builder(TokioExecutor::new())
        .http2_only(true)
        .build_http::<Full<Bytes>>();
    let req = Request::post(format!("http://{}/sessions", proxy.addr))
        .header("content-length", "5")
        .header("content-length", "5")
        .body(Full::new(Bytes::from_static(b"hello")))
        .unwrap();
    let resp = h2c.request(req).await.unwrap();
    assert_eq!(resp.status(), 200);
    let heads = livy.heads();
    let lengths: Vec<&str> = heads[0]
        .lines()
        .filter(|l| l.to_ascii_lowercase().starts_with("content-length:"))
        .collect();
    assert_eq!(lengths, ["content-length: 5"], "{}", heads[0]);
}

/// A Livy scripted at the TCP level for one streamed upload: it reads the
/// request head, records it, then either answers at once without reading
/// the body (`early`), or reads a `Content-Length` body without ever sending
/// `100 Continue` and answers with its length.
async fn upload_livy(ip: &str, early: Option<&'static str>) -> (LivyNode, Arc<Mutex<String>>) {
    let listener = TcpListener::bind((ip, 0)).await.unwrap();
    let addr = listener.local_addr().unwrap();
    let head_seen = Arc::new(Mutex::new(String::new()));
    let seen = head_seen.clone();
    tokio::spawn(async move {
        while let Ok((mut sock, _)) = listener.accept().await {
            let seen = seen.clone();
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 65536];
                let end = loop {
                    let n = sock.read(&mut chunk).await.unwrap_or(0);
                    if n == 0 {
                        return;
                    }
                    buf.extend_from_slice(&chunk[..n]);
                    if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                        break i + 4;
                    }
                };
                let head = String::from_utf8_lossy(&buf[..end]).to_lowercase();
                *seen.lock().unwrap() = head.clone();
                if let Some(answer) = early {
                    let _ = sock.write_all(answer.as_bytes()).await;
                    return; // closes without reading the body
                }
                let len: usize = head
                    .lines()
                    .find_map(|l| l.strip_prefix("content-length: "))
                    .and_then(|v| v.trim().parse().ok())
                    .unwrap_or(0);
                let mut got = buf.len() - end;
                while got < len {
                    match sock.read(&mut chunk).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => got += n,
                    }
                }
                let text = format!("len={got}");
                let resp = format!(
                    "HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n{text}",
                    text.len()
                );
                let _ = sock.write_all(resp.as_bytes()).await;
            });
        }
    });
    let node =
        LivyNode::parse(&format!("livy-u=http://{addr}"), AddressDefaults::default()).unwrap();
    (node, head_seen)
}

async fn upload(proxy: &Proxy, len: usize) -> (StatusCode, String) {
    let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    let req = Request::builder()
        .method("POST")
        .uri(format!("http://{}/sessions/0/statements", proxy.addr))
        .body(Full::new(Bytes::from(pattern(len))))
        .unwrap();
    let resp = client.request(req).await.unwrap();
    let status = resp.status();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    (status, String::from_utf8_lossy(&body).to_string())
}

#[tokio::test]
async fn a_streamed_body_asks_for_100_continue_and_goes_anyway_when_livy_never_answers_it() {
    let (node, head) = upload_livy("127.0.0.48", None).await;
    let proxy = proxy_to(&node).await;
    let (status, body) = upload(&proxy, 200_000).await;
    assert_eq!(status, 200);
    assert_eq!(body, "len=200000");
    assert!(head.lock().unwrap().contains("expect: 100-continue"));
}

#[tokio::test]
async fn an_answer_before_the_streamed_body_is_sent_reaches_the_client_as_livy_gave_it() {
    let early =
        "HTTP/1.1 413 Payload Too Large\r\ncontent-length: 8\r\nconnection: close\r\n\r\ntoo big!";
    let (node, _) = upload_livy("127.0.0.49", Some(early)).await;
    let proxy = proxy_to(&node).await;
    // Larger than the socket buffers: written whole first, it would fail.
    let (status, body) = upload(&proxy, 8 << 20).await;
    assert_eq!(status, 413, "{body}");
    assert_eq!(body, "too big!");
}

#[tokio::test]
async fn a_get_that_fails_after_reaching_livy_is_retried_once_not_until_the_hold_time_ends() {
    // Livy reads the request and closes without answering, every time.
    let livy = ScriptedLivy::start(
        "127.0.0.50",
        Arc::new(|_: &str| Answer {
            pieces: vec![],
            close: true,
        }),
    )
    .await;
    let proxy = proxy_to(&livy.node).await;
    let (status, _, got) = request(&proxy, "GET", "/sessions").await;
    assert_eq!(status, 502);
    let v: serde_json::Value = serde_json::from_slice(&got.unwrap()).unwrap();
    assert_eq!(v["kind"], "upstream_failed", "{v}");
    assert_eq!(
        livy.connections().len(),
        2,
        "the request and one retry on the same server (RFC 9110 9.2.2)"
    );
}
