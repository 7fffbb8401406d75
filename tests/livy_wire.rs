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

/// A Livy scripted at the TCP level. Reads body-less requests and logs each
/// as (connection number, request line).
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
                        let line = String::from_utf8_lossy(&head)
                            .lines()
                            .next()
                            .unwrap_or("")
                            .to_string();
                        log.lock().unwrap().push((conn_no, line.clone()));
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
        hold_timeout: Duration::from_secs(2),
        upstream_timeout: Duration::from_secs(30),
        client_header_timeout: Duration::from_secs(30),
        connect_timeout: Duration::from_secs(2),
        max_replay_body: 1024,
        trust_forwarded: false,
        retry_after: Duration::from_secs(5),
        max_upstream_connections: 16,
        client_body_timeout: Duration::from_secs(30),
        max_buffered_bodies: 64 * 1024 * 1024,
        max_streaming_uploads: 4,
        h2_max_concurrent_streams: 100,
        h2_max_header_list_size: 64 * 1024,
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
