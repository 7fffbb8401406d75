//! The HTTP proxy in-process, against in-process fake Livy servers, with the
//! leader channel driven by the test: fast checks of the forwarding rules
//! that do not need ZooKeeper (the end-to-end ones are in tests/failover.rs).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use livy_proxy::discovery::LeaderView;
use livy_proxy::http_proxy::{HttpProxy, HttpSettings};
use livy_proxy::node::{AddressDefaults, LivyNode};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// What a fake Livy server saw of one request.
#[derive(Clone, Debug)]
struct Seen {
    method: String,
    path: String,
    headers: HashMap<String, String>,
    /// Every header field in order, repeated names included.
    fields: Vec<(String, String)>,
    body: Bytes,
}

impl Seen {
    /// Every value of the header `name`, one per field.
    fn values(&self, name: &str) -> Vec<&str> {
        self.fields
            .iter()
            .filter(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
            .collect()
    }
}

type Handler = Arc<dyn Fn(&Seen) -> Response<Full<Bytes>> + Send + Sync>;

/// A fake Livy server on its own loopback address.
struct Fake {
    node: LivyNode,
    seen: Arc<Mutex<Vec<Seen>>>,
    stop: CancellationToken,
}

impl Fake {
    async fn start(id: &str, ip: &str, handler: Handler) -> Fake {
        let addr: SocketAddr = format!("{ip}:0").parse().unwrap();
        Fake::start_on(id, addr, handler).await
    }

    async fn start_on(id: &str, addr: SocketAddr, handler: Handler) -> Fake {
        let listener = TcpListener::bind(addr).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let stop = CancellationToken::new();
        let (seen2, stop2) = (seen.clone(), stop.clone());
        tokio::spawn(async move {
            loop {
                let (stream, _) = tokio::select! {
                    _ = stop2.cancelled() => return,
                    a = listener.accept() => a.unwrap(),
                };
                let (seen, handler) = (seen2.clone(), handler.clone());
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
                        let (seen, handler) = (seen.clone(), handler.clone());
                        async move {
                            let (parts, body) = req.into_parts();
                            let body = body.collect().await?.to_bytes();
                            let s = Seen {
                                method: parts.method.to_string(),
                                path: parts.uri.to_string(),
                                headers: parts
                                    .headers
                                    .iter()
                                    .map(|(k, v)| {
                                        (k.to_string(), v.to_str().unwrap_or("").to_string())
                                    })
                                    .collect(),
                                fields: parts
                                    .headers
                                    .iter()
                                    .map(|(k, v)| {
                                        (k.to_string(), v.to_str().unwrap_or("").to_string())
                                    })
                                    .collect(),
                                body,
                            };
                            seen.lock().unwrap().push(s.clone());
                            Ok::<_, hyper::Error>(handler(&s))
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        Fake {
            node: LivyNode::parse(&format!("{id}=http://{addr}"), AddressDefaults::default())
                .unwrap(),
            seen,
            stop,
        }
    }

    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }
}

impl Drop for Fake {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

fn ok_json(node: &'static str) -> Handler {
    Arc::new(move |s: &Seen| {
        Response::builder()
            .header("content-type", "application/json")
            .header("x-livy-node", node)
            .body(Full::new(Bytes::from(format!(
                "{{\"node\":\"{node}\",\"len\":{}}}",
                s.body.len()
            ))))
            .unwrap()
    })
}

/// A passive Livy server: 307 to `location_host` keeping path, like Livy's filter.
fn passive(location_origin: String) -> Handler {
    Arc::new(move |s: &Seen| {
        Response::builder()
            .status(307)
            .header("location", format!("{location_origin}{}", s.path))
            .body(Full::new(Bytes::from("This is a standby Livy Instance.")))
            .unwrap()
    })
}

struct Setup {
    proxy: SocketAddr,
    leader: watch::Sender<LeaderView>,
    stop: CancellationToken,
}

impl Drop for Setup {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

fn view(node: Option<&LivyNode>, generation: u64) -> LeaderView {
    LeaderView::fixed(node.cloned(), generation)
}

async fn setup(nodes: Vec<LivyNode>, leader: Option<&LivyNode>, hold: Duration) -> Setup {
    setup_with(nodes, leader, settings(hold)).await
}

fn settings(hold: Duration) -> HttpSettings {
    HttpSettings {
        listen: "127.0.0.1:0".parse().unwrap(),
        max_requests_in_flight: 4096,
        max_client_connections: 10_000,
        hold_timeout: hold,
        upstream_timeout: Duration::from_secs(30),
        client_header_timeout: Duration::from_secs(30),
        connect_timeout: Duration::from_secs(2),
        max_replay_body: 1024,
        trust_forwarded: false,
        strip_headers: Vec::new(),
        emit_forwarded: false,
        public_url: None,
        retry_after: Duration::from_secs(5),
        max_upstream_connections: 512,
        client_body_timeout: Duration::from_secs(30),
        client_send_timeout: Duration::from_secs(60),
        max_buffered_bodies: 64 * 1024 * 1024,
        max_streaming_uploads: 128,
        h2_max_concurrent_streams: 100,
        h2_max_header_list_size: 64 * 1024,
        proxy_protocol: Default::default(),
        client_identity_header: None,
        tls: None,
        tls_listen: None,
    }
}

async fn setup_with(
    nodes: Vec<LivyNode>,
    leader: Option<&LivyNode>,
    settings: HttpSettings,
) -> Setup {
    let (tx, rx) = watch::channel(view(leader, 1));
    let proxy = HttpProxy::new(settings, Arc::new(nodes), rx);
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let stop = CancellationToken::new();
    tokio::spawn(proxy.serve(listener, stop.clone()));
    Setup {
        proxy: addr,
        leader: tx,
        stop,
    }
}

fn client() -> Client<HttpConnector, Full<Bytes>> {
    Client::builder(TokioExecutor::new()).build_http()
}

async fn send(
    method: &str,
    url: String,
    headers: &[(&str, &str)],
    body: Bytes,
) -> (StatusCode, http::HeaderMap, String) {
    let mut b = Request::builder().method(method).uri(url);
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    let resp = client()
        .request(b.body(Full::new(body)).unwrap())
        .await
        .unwrap();
    let (parts, body) = resp.into_parts();
    let body = body.collect().await.unwrap().to_bytes();
    (
        parts.status,
        parts.headers,
        String::from_utf8_lossy(&body).to_string(),
    )
}

#[tokio::test]
async fn forwards_to_the_leader_with_forwarding_headers() {
    let a = Fake::start("livy-1", "127.0.0.21", ok_json("livy-1")).await;
    let b = Fake::start("livy-2", "127.0.0.22", ok_json("livy-2")).await;
    let s = setup(
        vec![a.node.clone(), b.node.clone()],
        Some(&b.node),
        Duration::from_secs(5),
    )
    .await;
    let (status, headers, body) = send(
        "GET",
        format!("http://{}/sessions?from=0", s.proxy),
        &[
            ("authorization", "Basic dTpw"),
            ("x-forwarded-for", "6.6.6.6"),
            ("connection", "x-hop"),
            ("x-hop", "1"),
        ],
        Bytes::new(),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("livy-2"));
    assert!(
        !headers.contains_key("via"),
        "responses carry no Via (a gateway's choice, RFC 9110 7.6.3)"
    );
    assert!(a.seen().is_empty());
    let seen = &b.seen()[0];
    assert_eq!(seen.headers["via"], "1.1 livy-proxy");
    assert_eq!(seen.path, "/sessions?from=0");
    assert_eq!(seen.headers["authorization"], "Basic dTpw");
    assert_eq!(
        seen.headers["x-forwarded-for"], "127.0.0.1",
        "untrusted chain replaced"
    );
    assert_eq!(seen.headers["x-forwarded-host"], s.proxy.to_string());
    assert_eq!(seen.headers["host"], b.node.origin.authority());
    assert!(
        !seen.headers.contains_key("x-hop"),
        "Connection-named header removed"
    );
}

/// Every forwarding header a client might send, one of them twice, one
/// named only by `strip-headers`, and one that is none of these.
const CLIENT_CLAIMS: &[(&str, &str)] = &[
    ("x-forwarded-for", "6.6.6.6"),
    ("x-forwarded-for", "7.7.7.7"),
    ("x-forwarded-proto", "https"),
    ("x-forwarded-host", "lb.example"),
    ("x-forwarded-server", "lb"),
    ("x-forwarded-port", "443"),
    ("forwarded", "for=6.6.6.6;proto=https"),
    ("x-real-ip", "6.6.6.6"),
    ("x-proxied-https", "on"),
    ("x-client-ip", "6.6.6.6"),
    ("x-other", "kept"),
];

async fn seen_behind(st: HttpSettings) -> (Seen, SocketAddr) {
    let b = Fake::start("livy-2", "127.0.0.22", ok_json("livy-2")).await;
    let s = setup_with(vec![b.node.clone()], Some(&b.node), st).await;
    let (status, _, body) = send(
        "GET",
        format!("http://{}/sessions", s.proxy),
        CLIENT_CLAIMS,
        Bytes::new(),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    (b.seen()[0].clone(), s.proxy)
}

fn forwarding_settings(trust: bool) -> HttpSettings {
    let mut st = settings(Duration::from_secs(5));
    st.trust_forwarded = trust;
    st.strip_headers = vec![http::HeaderName::from_static("x-client-ip")];
    st.emit_forwarded = true;
    st
}

#[tokio::test]
async fn untrusted_forwarding_headers_are_all_replaced_by_the_proxys_own() {
    let (seen, proxy) = seen_behind(forwarding_settings(false)).await;
    assert_eq!(seen.values("x-forwarded-for"), ["127.0.0.1"]);
    assert_eq!(seen.values("x-forwarded-proto"), ["http"]);
    assert_eq!(seen.values("x-forwarded-host"), [proxy.to_string()]);
    assert_eq!(
        seen.values("forwarded"),
        [format!("for=127.0.0.1;proto=http;host=\"{proxy}\"")]
    );
    for gone in [
        "x-forwarded-server",
        "x-forwarded-port",
        "x-real-ip",
        "x-proxied-https",
        "x-client-ip",
    ] {
        assert!(seen.values(gone).is_empty(), "{gone}: {:?}", seen.fields);
    }
    assert_eq!(seen.values("x-other"), ["kept"]);
}

#[tokio::test]
async fn trusted_forwarding_headers_are_all_extended_alike() {
    let (seen, proxy) = seen_behind(forwarding_settings(true)).await;
    assert_eq!(
        seen.values("x-forwarded-for"),
        ["6.6.6.6, 7.7.7.7, 127.0.0.1"]
    );
    assert_eq!(seen.values("x-forwarded-proto"), ["https, http"]);
    assert_eq!(
        seen.values("x-forwarded-host"),
        [format!("lb.example, {proxy}")]
    );
    assert_eq!(
        seen.values("forwarded"),
        [format!(
            "for=6.6.6.6;proto=https, for=127.0.0.1;proto=http;host=\"{proxy}\""
        )]
    );
    for kept in [
        "x-forwarded-server",
        "x-forwarded-port",
        "x-real-ip",
        "x-proxied-https",
        "x-client-ip",
    ] {
        assert_eq!(seen.values(kept).len(), 1, "{kept}: {:?}", seen.fields);
    }
}

#[tokio::test]
async fn post_body_arrives_once_and_intact() {
    let b = Fake::start("livy-2", "127.0.0.22", ok_json("livy-2")).await;
    let s = setup(vec![b.node.clone()], Some(&b.node), Duration::from_secs(5)).await;
    // Larger than the replay limit (1 KiB here): streamed, still intact.
    for size in [10usize, 5000, 300_000] {
        let payload: Vec<u8> = (0..size).map(|i| (i % 251) as u8).collect();
        let (status, _, body) = send(
            "POST",
            format!("http://{}/sessions", s.proxy),
            &[("content-type", "application/json")],
            Bytes::from(payload.clone()),
        )
        .await;
        assert_eq!(status, 200);
        assert!(body.contains(&format!("\"len\":{size}")), "{body}");
        let seen = b.seen();
        assert_eq!(seen.last().unwrap().body.as_ref(), payload.as_slice());
    }
    assert_eq!(b.seen().len(), 3, "each POST exactly once");
}

#[tokio::test]
async fn stale_307_is_followed_with_credentials_and_body() {
    let b = Fake::start("livy-2", "127.0.0.22", ok_json("livy-2")).await;
    let a = Fake::start(
        "livy-1",
        "127.0.0.21",
        passive(format!("http://{}", b.node.origin.authority())),
    )
    .await;
    // Discovery still names the passive livy-1.
    let s = setup(
        vec![a.node.clone(), b.node.clone()],
        Some(&a.node),
        Duration::from_secs(5),
    )
    .await;
    let (status, _, body) = send(
        "POST",
        format!("http://{}/sessions/3/statements", s.proxy),
        &[("authorization", "Basic c2VjcmV0")],
        Bytes::from_static(b"{\"code\":\"1+1\"}"),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("livy-2"));
    assert_eq!(a.seen().len(), 1);
    let seen = b.seen();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].headers["authorization"], "Basic c2VjcmV0");
    assert_eq!(seen[0].body.as_ref(), b"{\"code\":\"1+1\"}");
    assert_eq!(seen[0].path, "/sessions/3/statements");
    assert_eq!(seen[0].method, "POST");
}

#[tokio::test]
async fn passives_redirecting_to_each_other_give_503_after_three_hops() {
    // Two passives naming each other: only possible mid-election.
    let a_listener = std::net::TcpListener::bind("127.0.0.25:0").unwrap();
    let a_addr = a_listener.local_addr().unwrap();
    drop(a_listener);
    let b = Fake::start("livy-2", "127.0.0.22", passive(format!("http://{a_addr}"))).await;
    let a = Fake::start_on(
        "livy-1",
        a_addr,
        passive(format!("http://{}", b.node.origin.authority())),
    )
    .await;
    let s = setup(
        vec![a.node.clone(), b.node.clone()],
        Some(&a.node),
        Duration::from_secs(5),
    )
    .await;
    let (status, headers, body) = send(
        "GET",
        format!("http://{}/version", s.proxy),
        &[],
        Bytes::new(),
    )
    .await;
    assert_eq!(status, 503, "{body}");
    assert!(headers.contains_key("retry-after"));
    assert_eq!(
        a.seen().len() + b.seen().len(),
        4,
        "first try plus three hops"
    );
}

#[tokio::test]
async fn redirect_to_unknown_host_is_passed_through_untouched() {
    let foreign = Fake::start("evil", "127.0.0.29", ok_json("evil")).await;
    let a = Fake::start(
        "livy-1",
        "127.0.0.21",
        passive(format!("http://{}", foreign.node.origin.authority())),
    )
    .await;
    let s = setup(vec![a.node.clone()], Some(&a.node), Duration::from_secs(5)).await;
    let (status, headers, _) = send(
        "GET",
        format!("http://{}/version", s.proxy),
        &[],
        Bytes::new(),
    )
    .await;
    assert_eq!(status, 307);
    assert_eq!(
        headers["location"],
        format!("http://{}/version", foreign.node.origin.authority()).as_str()
    );
    assert!(foreign.seen().is_empty(), "never fetched");
}

#[tokio::test]
async fn location_naming_a_livy_node_is_rewritten_to_the_proxy() {
    let created: Handler = Arc::new(|_s: &Seen| {
        Response::builder()
            .status(201)
            .header("location", "http://127.0.0.22:1/sessions/7")
            .body(Full::new(Bytes::from_static(b"{}")))
            .unwrap()
    });
    let b = Fake::start("livy-2", "127.0.0.22", created).await;
    let mut listed = b.node.clone();
    listed.origin.port = 1;
    listed.id = "livy-x".into();
    let s = setup(
        vec![b.node.clone(), listed],
        Some(&b.node),
        Duration::from_secs(5),
    )
    .await;
    let (status, headers, _) = send(
        "POST",
        format!("http://{}/sessions", s.proxy),
        &[],
        Bytes::from_static(b"{}"),
    )
    .await;
    assert_eq!(status, 201);
    assert_eq!(
        headers["location"],
        format!("http://{}/sessions/7", s.proxy).as_str()
    );
}

/// The `Location` of a POST sent with a `Host` the client made up.
async fn location_from_evil_host(s: &Setup) -> String {
    let (status, headers, _) = send(
        "POST",
        format!("http://{}/sessions", s.proxy),
        &[("host", "evil.example:1")],
        Bytes::from_static(b"{}"),
    )
    .await;
    assert_eq!(status, 201);
    headers["location"].to_str().unwrap().to_string()
}

#[tokio::test]
async fn location_names_the_proxys_own_address_whatever_host_the_client_sent() {
    let created: Handler = Arc::new(|_s: &Seen| {
        Response::builder()
            .status(201)
            .header("location", "http://127.0.0.22:1/sessions/7?a=b")
            .body(Full::new(Bytes::from_static(b"{}")))
            .unwrap()
    });
    let b = Fake::start("livy-2", "127.0.0.22", created).await;
    let mut listed = b.node.clone();
    listed.origin.port = 1;
    listed.id = "livy-x".into();
    let nodes = vec![b.node.clone(), listed];
    // No public-url: the address the client's connection reached.
    let s = setup(nodes.clone(), Some(&b.node), Duration::from_secs(5)).await;
    assert_eq!(
        location_from_evil_host(&s).await,
        format!("http://{}/sessions/7?a=b", s.proxy)
    );
    // public-url: that.
    let mut st = settings(Duration::from_secs(5));
    st.public_url = Some("https://livy.example.com".into());
    let s = setup_with(nodes, Some(&b.node), st).await;
    assert_eq!(
        location_from_evil_host(&s).await,
        "https://livy.example.com/sessions/7?a=b"
    );
}

#[tokio::test]
async fn no_leader_gives_503_json_after_the_hold_time() {
    let s = setup(vec![], None, Duration::from_millis(300)).await;
    let (status, headers, body) = send(
        "GET",
        format!("http://{}/sessions", s.proxy),
        &[],
        Bytes::new(),
    )
    .await;
    assert_eq!(status, 503);
    assert!(headers.contains_key("retry-after"));
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert!(
        v["msg"].as_str().unwrap().contains("no active Livy server"),
        "{body}"
    );
    assert_eq!(v["kind"], "no_leader", "{body}");
}

#[tokio::test]
async fn request_held_during_election_is_served_by_the_new_leader() {
    let b = Fake::start("livy-2", "127.0.0.22", ok_json("livy-2")).await;
    let s = setup(vec![b.node.clone()], None, Duration::from_secs(20)).await;
    let url = format!("http://{}/version", s.proxy);
    let pending = tokio::spawn(send("GET", url, &[], Bytes::new()));
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(!pending.is_finished(), "held while no leader is known");
    s.leader.send(view(Some(&b.node), 2)).unwrap();
    let (status, _, body) = pending.await.unwrap();
    assert_eq!(status, 200);
    assert!(body.contains("livy-2"));
}

#[tokio::test]
async fn refused_connect_waits_for_the_next_leader_even_for_post() {
    // A dead leader: an address nothing listens on.
    let dead_listener = std::net::TcpListener::bind("127.0.0.23:0").unwrap();
    let dead_addr = dead_listener.local_addr().unwrap();
    drop(dead_listener);
    let dead = LivyNode::parse(
        &format!("livy-3=http://{dead_addr}"),
        AddressDefaults::default(),
    )
    .unwrap();
    let b = Fake::start("livy-2", "127.0.0.22", ok_json("livy-2")).await;
    let s = setup(
        vec![dead.clone(), b.node.clone()],
        Some(&dead),
        Duration::from_secs(20),
    )
    .await;
    let url = format!("http://{}/batches", s.proxy);
    let pending = tokio::spawn(send(
        "POST",
        url,
        &[],
        Bytes::from_static(b"{\"file\":\"x.jar\"}"),
    ));
    tokio::time::sleep(Duration::from_millis(300)).await;
    s.leader.send(view(Some(&b.node), 2)).unwrap();
    let (status, _, _) = pending.await.unwrap();
    assert_eq!(status, 200);
    assert_eq!(b.seen().len(), 1, "sent once, to the new leader");
}

#[tokio::test]
async fn unreachable_leader_gives_503_naming_it() {
    let dead_listener = std::net::TcpListener::bind("127.0.0.23:0").unwrap();
    let dead_addr = dead_listener.local_addr().unwrap();
    drop(dead_listener);
    let dead = LivyNode::parse(
        &format!("livy-3=http://{dead_addr}"),
        AddressDefaults::default(),
    )
    .unwrap();
    let s = setup(vec![dead.clone()], Some(&dead), Duration::from_millis(500)).await;
    let (status, headers, body) = send(
        "GET",
        format!("http://{}/version", s.proxy),
        &[],
        Bytes::new(),
    )
    .await;
    assert_eq!(status, 503);
    assert!(headers.contains_key("retry-after"));
    assert!(body.contains("livy-3"), "{body}");
}

#[tokio::test]
async fn post_is_not_resent_when_the_server_dies_mid_request() {
    // Accepts, reads the request, then drops the connection without answering.
    let listener = TcpListener::bind("127.0.0.24:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let accepted = Arc::new(Mutex::new(0usize));
    let acc = accepted.clone();
    tokio::spawn(async move {
        loop {
            let (mut stream, _) = listener.accept().await.unwrap();
            *acc.lock().unwrap() += 1;
            let mut buf = [0u8; 4096];
            let _ = tokio::io::AsyncReadExt::read(&mut stream, &mut buf).await;
            drop(stream);
        }
    });
    let node =
        LivyNode::parse(&format!("livy-4=http://{addr}"), AddressDefaults::default()).unwrap();
    let s = setup(vec![node.clone()], Some(&node), Duration::from_secs(2)).await;
    let (status, headers, body) = send(
        "POST",
        format!("http://{}/sessions", s.proxy),
        &[],
        Bytes::from_static(b"{}"),
    )
    .await;
    assert_eq!(status, 502, "{body}");
    assert!(headers.contains_key("retry-after"));
    assert_eq!(
        *accepted.lock().unwrap(),
        1,
        "the POST reached one connection only"
    );
}

#[tokio::test]
async fn h2c_prior_knowledge_is_served() {
    let b = Fake::start("livy-2", "127.0.0.22", ok_json("livy-2")).await;
    let s = setup(vec![b.node.clone()], Some(&b.node), Duration::from_secs(5)).await;
    let h2: Client<HttpConnector, Full<Bytes>> = Client::builder(TokioExecutor::new())
        .http2_only(true)
        .build_http();
    let req = Request::get(format!("http://{}/version", s.proxy))
        .body(Full::new(Bytes::new()))
        .unwrap();
    let resp = h2.request(req).await.unwrap();
    assert_eq!(resp.version(), http::Version::HTTP_2);
    assert_eq!(resp.status(), 200);
    assert_eq!(b.seen()[0].headers["host"], b.node.origin.authority());
}

/// A client speaking h2c with prior knowledge.
fn h2c_client() -> Client<HttpConnector, Full<Bytes>> {
    Client::builder(TokioExecutor::new())
        .http2_only(true)
        .build_http()
}

#[tokio::test]
async fn h2c_cookie_fields_reach_livy_joined_into_one() {
    let b = Fake::start("livy-2", "127.0.0.22", ok_json("livy-2")).await;
    let s = setup(vec![b.node.clone()], Some(&b.node), Duration::from_secs(5)).await;
    // h2 clients send each cookie as its own field (RFC 9113 8.2.3);
    // HTTP/1.1 allows one Cookie line (RFC 6265 5.4).
    let req = Request::get(format!("http://{}/sessions", s.proxy))
        .header("cookie", "a=1")
        .header("cookie", "b=2; c=3")
        .header("cookie", "d=4")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let resp = h2c_client().request(req).await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(b.seen()[0].values("cookie"), ["a=1; b=2; c=3; d=4"]);
}

#[tokio::test]
async fn pipelined_requests_are_answered_in_order() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let b = Fake::start("livy-2", "127.0.0.22", ok_json("livy-2")).await;
    let s = setup(vec![b.node.clone()], Some(&b.node), Duration::from_secs(5)).await;
    let mut conn = tokio::net::TcpStream::connect(s.proxy).await.unwrap();
    conn.write_all(
        b"GET /a HTTP/1.1\r\nHost: x\r\n\r\nGET /b HTTP/1.1\r\nHost: x\r\n\r\nGET /c HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    .await
    .unwrap();
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), conn.read_to_end(&mut out))
        .await
        .unwrap()
        .unwrap();
    let text = String::from_utf8_lossy(&out);
    assert_eq!(text.matches("HTTP/1.1 200").count(), 3, "{text}");
    let paths: Vec<String> = b.seen().iter().map(|s| s.path.clone()).collect();
    assert_eq!(paths, ["/a", "/b", "/c"]);
}

#[tokio::test]
async fn malformed_request_gets_400_and_connect_gets_405() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let s = setup(vec![], None, Duration::from_millis(100)).await;
    let mut conn = tokio::net::TcpStream::connect(s.proxy).await.unwrap();
    conn.write_all(b"GET /x HTTP/1.1\r\nHost: a\r\nBad Header\r\n\r\n")
        .await
        .unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), conn.read_to_end(&mut out)).await;
    assert!(
        String::from_utf8_lossy(&out).starts_with("HTTP/1.1 400"),
        "{}",
        String::from_utf8_lossy(&out)
    );

    let mut conn = tokio::net::TcpStream::connect(s.proxy).await.unwrap();
    conn.write_all(b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n")
        .await
        .unwrap();
    let mut buf = vec![0u8; 1024];
    let n = tokio::time::timeout(Duration::from_secs(10), conn.read(&mut buf))
        .await
        .unwrap()
        .unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 405"));
}

/// RFC 9112 §3.2: an HTTP/1.1 request without a Host field, or any request
/// with two, is refused with 400 before Livy sees it; HTTP/1.0 needs none.
#[tokio::test]
async fn a_request_without_one_host_field_gets_400_and_never_reaches_livy() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let livy = Fake::start("livy-1", "127.0.0.21", ok_json("livy-1")).await;
    let s = setup(
        vec![livy.node.clone()],
        Some(&livy.node),
        Duration::from_secs(5),
    )
    .await;
    async fn status_of(proxy: SocketAddr, head: &[u8]) -> String {
        let mut conn = tokio::net::TcpStream::connect(proxy).await.unwrap();
        conn.write_all(head).await.unwrap();
        let mut out = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(10), conn.read_to_end(&mut out)).await;
        String::from_utf8_lossy(&out).into_owned()
    }
    for head in [
        &b"GET /sessions HTTP/1.1\r\nConnection: close\r\n\r\n"[..],
        &b"GET /sessions HTTP/1.1\r\nHost: a\r\nHost: b\r\nConnection: close\r\n\r\n"[..],
        &b"GET /sessions HTTP/1.0\r\nHost: a\r\nHost: b\r\n\r\n"[..],
    ] {
        let answer = status_of(s.proxy, head).await;
        assert!(
            (answer.starts_with("HTTP/1.1 400") || answer.starts_with("HTTP/1.0 400"))
                && answer.contains("Host fields"),
            "{}: {answer}",
            String::from_utf8_lossy(head)
        );
    }
    assert!(
        livy.seen().is_empty(),
        "Livy saw a refused request: {:?}",
        livy.seen()
    );
    let answer = status_of(s.proxy, b"GET /sessions HTTP/1.0\r\n\r\n").await;
    assert!(
        answer.starts_with("HTTP/1.0 200") || answer.starts_with("HTTP/1.1 200"),
        "HTTP/1.0 needs no Host: {answer}"
    );
    assert_eq!(livy.seen().len(), 1);
}

#[tokio::test]
async fn pooled_connection_closed_by_livy_is_replaced_and_post_sent_once() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    // A server that answers one request per connection with keep-alive
    // headers, then closes the connection shortly after (as an idle timeout
    // would): the proxy's pooled connection is dead when the POST comes.
    let listener = TcpListener::bind("127.0.0.26:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let requests = Arc::new(Mutex::new(Vec::<String>::new()));
    let seen = requests.clone();
    tokio::spawn(async move {
        loop {
            let (mut s, _) = listener.accept().await.unwrap();
            let seen = seen.clone();
            tokio::spawn(async move {
                let mut buf = vec![0u8; 8192];
                let mut got = Vec::new();
                loop {
                    let n = s.read(&mut buf).await.unwrap_or(0);
                    if n == 0 {
                        return;
                    }
                    got.extend_from_slice(&buf[..n]);
                    let text = String::from_utf8_lossy(&got).to_string();
                    if let Some(end) = text.find("\r\n\r\n") {
                        let len = text[..end]
                            .lines()
                            .find_map(|l| {
                                l.to_ascii_lowercase()
                                    .strip_prefix("content-length: ")
                                    .map(|v| v.trim().parse::<usize>().unwrap_or(0))
                            })
                            .unwrap_or(0);
                        if got.len() >= end + 4 + len {
                            break;
                        }
                    }
                }
                seen.lock().unwrap().push(
                    String::from_utf8_lossy(&got)
                        .lines()
                        .next()
                        .unwrap_or("")
                        .to_string(),
                );
                let _ = s
                    .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
                    .await;
                tokio::time::sleep(Duration::from_millis(20)).await;
                drop(s);
            });
        }
    });
    let node =
        LivyNode::parse(&format!("livy-5=http://{addr}"), AddressDefaults::default()).unwrap();
    let s = setup(vec![node.clone()], Some(&node), Duration::from_secs(5)).await;
    let (status, _, _) = send(
        "GET",
        format!("http://{}/version", s.proxy),
        &[],
        Bytes::new(),
    )
    .await;
    assert_eq!(status, 200);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let (status, _, body) = send(
        "POST",
        format!("http://{}/sessions", s.proxy),
        &[],
        Bytes::from_static(b"{}"),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let seen = requests.lock().unwrap().clone();
    assert_eq!(
        seen.iter().filter(|l| l.starts_with("POST")).count(),
        1,
        "{seen:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_connections_are_capped_and_extra_requests_wait() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    // A slow Livy that counts its connections and requests in flight.
    let listener = TcpListener::bind("127.0.0.27:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let connections = Arc::new(AtomicUsize::new(0));
    let in_flight = Arc::new(AtomicUsize::new(0));
    let most = Arc::new(AtomicUsize::new(0));
    let (c, f, m) = (connections.clone(), in_flight.clone(), most.clone());
    tokio::spawn(async move {
        loop {
            let (stream, _) = listener.accept().await.unwrap();
            c.fetch_add(1, Ordering::SeqCst);
            let (f, m) = (f.clone(), m.clone());
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |_req: Request<Incoming>| {
                    let (f, m) = (f.clone(), m.clone());
                    async move {
                        let now = f.fetch_add(1, Ordering::SeqCst) + 1;
                        m.fetch_max(now, Ordering::SeqCst);
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        f.fetch_sub(1, Ordering::SeqCst);
                        Ok::<_, hyper::Error>(Response::new(Full::new(Bytes::from_static(b"{}"))))
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    let node =
        LivyNode::parse(&format!("livy-6=http://{addr}"), AddressDefaults::default()).unwrap();
    let mut st = settings(Duration::from_secs(5));
    st.max_upstream_connections = 2;
    let s = setup_with(vec![node.clone()], Some(&node), st).await;
    let requests = (0..8).map(|_| {
        let url = format!("http://{}/sessions", s.proxy);
        tokio::spawn(async move { send("GET", url, &[], Bytes::new()).await.0 })
    });
    for r in futures_util::future::join_all(requests).await {
        assert_eq!(r.unwrap(), 200, "every request is served");
    }
    assert_eq!(
        connections.load(Ordering::SeqCst),
        2,
        "two connections, reused"
    );
    assert_eq!(
        most.load(Ordering::SeqCst),
        2,
        "never more than two in flight"
    );
}

#[tokio::test]
async fn livy_silent_past_upstream_timeout_gives_504_each_time_on_one_connection() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    // A Livy that reads requests and never answers.
    let listener = TcpListener::bind("127.0.0.27:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let (mut s, _) = listener.accept().await.unwrap();
            tokio::spawn(async move {
                let mut buf = [0u8; 1024];
                while s.read(&mut buf).await.unwrap_or(0) > 0 {}
            });
        }
    });
    let node =
        LivyNode::parse(&format!("livy-6=http://{addr}"), AddressDefaults::default()).unwrap();
    let mut st = settings(Duration::from_secs(5));
    st.upstream_timeout = Duration::from_millis(500);
    let s = setup_with(vec![node.clone()], Some(&node), st).await;
    // Two requests on one kept-alive client connection: each gets its 504
    // and the connection stays usable.
    let mut c = tokio::net::TcpStream::connect(s.proxy).await.unwrap();
    for _ in 0..2 {
        c.write_all(b"GET /sessions HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        let mut got = Vec::new();
        let mut buf = [0u8; 4096];
        let head = tokio::time::timeout(Duration::from_secs(20), async {
            loop {
                let n = c.read(&mut buf).await.unwrap();
                assert!(n > 0, "connection closed instead of a 504");
                got.extend_from_slice(&buf[..n]);
                let text = String::from_utf8_lossy(&got).to_string();
                if text.contains("\r\n\r\n") && text.ends_with('}') {
                    return text;
                }
            }
        })
        .await
        .expect("an answer within 20 s");
        assert!(head.starts_with("HTTP/1.1 504"), "{head}");
        assert!(head.contains("did not answer within"), "{head}");
    }
}

#[tokio::test]
async fn client_slow_with_its_headers_is_disconnected_after_client_header_timeout() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let a = Fake::start("livy-1", "127.0.0.21", ok_json("livy-1")).await;
    let mut st = settings(Duration::from_secs(5));
    st.client_header_timeout = Duration::from_millis(500);
    let s = setup_with(vec![a.node.clone()], Some(&a.node), st).await;
    let closed = |mut c: tokio::net::TcpStream| async move {
        let mut buf = [0u8; 4096];
        tokio::time::timeout(Duration::from_secs(20), async {
            loop {
                match c.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(_) => {}
                }
            }
        })
        .await
        .is_ok()
    };
    // A connection that never says anything.
    let c = tokio::net::TcpStream::connect(s.proxy).await.unwrap();
    assert!(closed(c).await, "a silent connection must be cut off");
    // The first letters of h2c's preface, then silence.
    let mut c = tokio::net::TcpStream::connect(s.proxy).await.unwrap();
    c.write_all(b"PRI * HTTP/2").await.unwrap();
    assert!(closed(c).await, "a half-sent preface must be cut off");
    // Half a request head, then silence.
    let mut c = tokio::net::TcpStream::connect(s.proxy).await.unwrap();
    c.write_all(b"GET /sessions HTTP/1.1\r\nHo").await.unwrap();
    assert!(closed(c).await, "a half-sent head must be cut off");
    // A kept-alive connection after two full exchanges, then silence: the
    // same timeout closes it (it is also the keep-alive idle timeout).
    let mut c = tokio::net::TcpStream::connect(s.proxy).await.unwrap();
    for _ in 0..2 {
        c.write_all(b"GET /sessions HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        let mut buf = [0u8; 4096];
        let n = tokio::time::timeout(Duration::from_secs(20), c.read(&mut buf))
            .await
            .unwrap()
            .unwrap();
        assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
    }
    assert!(
        closed(c).await,
        "an idle kept-alive connection must be closed"
    );
}

/// Everything the proxy sends on `c` until it closes the connection, or
/// `None` if it is still open after 20 s.
async fn read_until_closed(c: &mut tokio::net::TcpStream) -> Option<String> {
    use tokio::io::AsyncReadExt;
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    tokio::time::timeout(Duration::from_secs(20), async {
        loop {
            match c.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => out.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await
    .ok()?;
    Some(String::from_utf8_lossy(&out).to_string())
}

/// A client connection that sent a POST's head and `sent` bytes of a
/// `declared`-byte body, and then nothing.
async fn stalled_post(proxy: SocketAddr, declared: usize, sent: usize) -> tokio::net::TcpStream {
    use tokio::io::AsyncWriteExt;
    let mut c = tokio::net::TcpStream::connect(proxy).await.unwrap();
    c.write_all(
        format!("POST /sessions HTTP/1.1\r\nHost: x\r\nContent-Length: {declared}\r\n\r\n")
            .as_bytes(),
    )
    .await
    .unwrap();
    c.write_all(&vec![b'x'; sent]).await.unwrap();
    c
}

#[tokio::test]
async fn a_stalled_body_gets_408_and_its_connection_is_closed_buffered_or_streamed() {
    let a = Fake::start("livy-1", "127.0.0.21", ok_json("livy-1")).await;
    let mut st = settings(Duration::from_secs(5));
    st.client_body_timeout = Duration::from_millis(500);
    let s = setup_with(vec![a.node.clone()], Some(&a.node), st).await;
    // 100 bytes fit the 1 KiB replay buffer; 5000 are streamed to Livy.
    for (declared, sent) in [(100, 50), (5000, 2000)] {
        let mut c = stalled_post(s.proxy, declared, sent).await;
        let answer = read_until_closed(&mut c)
            .await
            .unwrap_or_else(|| panic!("a {declared}-byte body stalled: still open after 20 s"));
        assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
        assert!(answer.contains("\"kind\":\"body_timeout\""), "{answer}");
    }
    assert!(a.seen().is_empty(), "no request reached Livy whole");
    // A body that keeps coming, however slowly, is not cut off.
    let (status, _, body) = send(
        "POST",
        format!("http://{}/sessions", s.proxy),
        &[],
        Bytes::from_static(b"{}"),
    )
    .await;
    assert_eq!(status, 200, "{body}");
}

/// An answer larger than every socket buffer between Livy and the client
/// (so that a client that reads nothing stalls the proxy's writes).
const BIG: usize = 48 * 1024 * 1024;

/// A Livy answering `BIG` bytes on `/big`, behind a proxy with one
/// connection to it (a stalled answer holds it until the proxy lets it go)
/// and a `client-send-timeout` of 500 ms.
async fn big_answer_behind_one_connection() -> (Fake, Setup) {
    let handler: Handler = Arc::new(|seen: &Seen| {
        if seen.path == "/big" {
            Response::new(Full::new(Bytes::from(vec![b'x'; BIG])))
        } else {
            Response::new(Full::new(Bytes::from_static(b"{}")))
        }
    });
    let a = Fake::start("livy-1", "127.0.0.21", handler).await;
    let mut st = settings(Duration::from_secs(5));
    st.client_send_timeout = Duration::from_millis(500);
    st.max_upstream_connections = 1;
    let s = setup_with(vec![a.node.clone()], Some(&a.node), st).await;
    (a, s)
}

/// Another client gets the one Livy connection once the stalled one is
/// cut off (without that, it waits for it within `upstream-timeout`, past
/// this deadline).
async fn another_client_is_served(s: &Setup) {
    let (status, _, body) = tokio::time::timeout(
        Duration::from_secs(20),
        send(
            "GET",
            format!("http://{}/sessions", s.proxy),
            &[],
            Bytes::new(),
        ),
    )
    .await
    .expect("a second request answered");
    assert_eq!(status, 200, "{body}");
}

#[tokio::test]
async fn a_client_that_stops_reading_is_cut_off_and_its_livy_connection_freed() {
    use tokio::io::AsyncWriteExt;
    let (a, s) = big_answer_behind_one_connection().await;
    let mut stalled = tokio::net::TcpStream::connect(s.proxy).await.unwrap();
    stalled
        .write_all(b"GET /big HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    // Wait until Livy has the request, so that it holds the connection.
    let sent = async {
        while a.seen().is_empty() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(20), sent)
        .await
        .expect("the big request reached Livy");
    another_client_is_served(&s).await;
    // The stalled client's connection was closed short of the answer.
    let got = read_until_closed(&mut stalled)
        .await
        .expect("the stalled connection is closed");
    assert!(
        got.starts_with("HTTP/1.1 200"),
        "{}",
        &got[..got.len().min(200)]
    );
    assert!(
        got.len() < BIG,
        "the whole answer arrived: {} bytes",
        got.len()
    );
}

/// An h2c connection to the proxy, driven by a task of its own; the task
/// ends when the connection does.
async fn h2_client(
    proxy: SocketAddr,
) -> (
    h2::client::SendRequest<Bytes>,
    tokio::task::JoinHandle<Result<(), h2::Error>>,
) {
    let tcp = tokio::net::TcpStream::connect(proxy).await.unwrap();
    let (client, conn) = h2::client::handshake(tcp).await.unwrap();
    (client, tokio::spawn(conn))
}

#[tokio::test]
async fn an_h2c_client_that_grants_no_window_is_cut_off_and_its_livy_connection_freed() {
    let (_a, s) = big_answer_behind_one_connection().await;
    let (client, conn) = h2_client(s.proxy).await;
    let mut client = client.ready().await.unwrap();
    let req = Request::get(format!("http://{}/big", s.proxy))
        .body(())
        .unwrap();
    let (response, _) = client.send_request(req, true).unwrap();
    let response = tokio::time::timeout(Duration::from_secs(20), response)
        .await
        .expect("the answer's head")
        .unwrap();
    assert_eq!(response.status(), 200);
    // The body is never read: the client's connection task goes on
    // reading the socket, but grants no window past the first 64 KiB.
    let body = response.into_body();
    another_client_is_served(&s).await;
    tokio::time::timeout(Duration::from_secs(20), conn)
        .await
        .expect("the stalled h2c connection was closed")
        .unwrap()
        .ok();
    drop(body);
}

#[tokio::test]
async fn stalled_h2c_streams_get_408_while_the_connection_keeps_serving() {
    let a = Fake::start("livy-1", "127.0.0.21", ok_json("livy-1")).await;
    let mut st = settings(Duration::from_secs(5));
    st.client_body_timeout = Duration::from_millis(500);
    let s = setup_with(vec![a.node.clone()], Some(&a.node), st).await;
    let (client, _conn) = h2_client(s.proxy).await;
    let mut client = client.ready().await.unwrap();
    // Several streams each declare a body and send only part of it: one
    // buffered, one streamed, then more of each.
    let mut stalled = Vec::new();
    for declared in [100usize, 5000, 100, 5000] {
        let req = Request::post(format!("http://{}/sessions", s.proxy))
            .header("content-length", declared)
            .body(())
            .unwrap();
        let (response, mut body) = client.send_request(req, false).unwrap();
        body.send_data(Bytes::from(vec![b'x'; 10]), false).unwrap();
        stalled.push((response, body));
        client = client.ready().await.unwrap();
    }
    // The same connection still answers others meanwhile.
    let (response, _) = client
        .send_request(
            Request::get(format!("http://{}/version", s.proxy))
                .body(())
                .unwrap(),
            true,
        )
        .unwrap();
    let response = tokio::time::timeout(Duration::from_secs(20), response)
        .await
        .expect("an answer within 20 s")
        .unwrap();
    assert_eq!(response.status(), 200);
    for (response, _body) in stalled {
        let response = tokio::time::timeout(Duration::from_secs(20), response)
            .await
            .expect("a stalled stream answered within 20 s")
            .unwrap();
        assert_eq!(response.status(), 408);
    }
}

#[tokio::test]
async fn past_max_buffered_bodies_a_body_is_streamed_not_buffered() {
    // Observable by its replay: a stale 307 is followed for a buffered
    // body; a streamed one, read by this passive (it answers 100 Continue),
    // cannot be resent, and with a view that cannot move (nothing discovers
    // here) the client gets 503 `leader_changing`.
    let b = Fake::start("livy-2", "127.0.0.22", ok_json("livy-2")).await;
    let a = Fake::start(
        "livy-1",
        "127.0.0.21",
        passive(format!("http://{}", b.node.origin.authority())),
    )
    .await;
    let mut st = settings(Duration::from_secs(5));
    st.max_buffered_bodies = 2048;
    let s = setup_with(vec![a.node.clone(), b.node.clone()], Some(&a.node), st).await;
    let post = || {
        send(
            "POST",
            format!("http://{}/sessions", s.proxy),
            &[],
            Bytes::from(vec![b'x'; 500]),
        )
    };
    assert_eq!(post().await.0, 200, "buffered, followed to livy-2");
    // Two stalled bodies of 1000 declared bytes hold 2000 of the 2048.
    let stalled = [
        stalled_post(s.proxy, 1000, 10).await,
        stalled_post(s.proxy, 1000, 10).await,
    ];
    let status_until = |want: u16| async move {
        for _ in 0..200 {
            if post().await.0 == want {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        false
    };
    assert!(
        status_until(503).await,
        "with the budget taken, a 500-byte body must be streamed (its 307 not followed)"
    );
    drop(stalled);
    assert!(
        status_until(200).await,
        "the budget comes back when the stalled clients go"
    );
}

/// What the proxy sends first on `c` (empty if it closes).
async fn first_read(c: &mut tokio::net::TcpStream) -> String {
    use tokio::io::AsyncReadExt;
    let mut buf = vec![0u8; 4096];
    let n = c.read(&mut buf).await.unwrap_or(0);
    String::from_utf8_lossy(&buf[..n]).to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_uploads_hold_only_their_share_of_livy_connections() {
    let b = Fake::start("livy-2", "127.0.0.22", ok_json("livy-2")).await;
    let mut st = settings(Duration::from_secs(1));
    st.upstream_timeout = Duration::from_secs(5);
    st.max_upstream_connections = 2;
    st.max_streaming_uploads = 1;
    let s = setup_with(vec![b.node.clone()], Some(&b.node), st).await;
    // Two uploads larger than the replay limit, trickling: one streams to
    // Livy (holding one of the two connections), the other finds the
    // streaming share taken and gets a 503 after the hold time.
    let mut first = stalled_post(s.proxy, 5000, 100).await;
    let mut second = stalled_post(s.proxy, 5000, 100).await;
    let refused = tokio::time::timeout(Duration::from_secs(20), async {
        tokio::select! {
            a = first_read(&mut first) => a,
            a = first_read(&mut second) => a,
        }
    })
    .await
    .expect("one of two slow uploads refused within 20 s");
    assert!(refused.starts_with("HTTP/1.1 503"), "{refused}");
    assert!(refused.contains("\"kind\":\"overloaded\""), "{refused}");
    // Meanwhile everyone else is served on the other connection.
    for _ in 0..3 {
        let (status, _, body) = send(
            "GET",
            format!("http://{}/sessions", s.proxy),
            &[],
            Bytes::new(),
        )
        .await;
        assert_eq!(status, 200, "{body}");
    }
}

#[tokio::test]
async fn an_idle_h2c_connection_is_closed_after_client_header_timeout() {
    use tokio::io::AsyncWriteExt;
    let a = Fake::start("livy-1", "127.0.0.21", ok_json("livy-1")).await;
    let mut st = settings(Duration::from_secs(5));
    st.client_header_timeout = Duration::from_millis(500);
    let s = setup_with(vec![a.node.clone()], Some(&a.node), st).await;
    // The preface and an empty SETTINGS frame, then silence (not even the
    // acknowledgement of the proxy's SETTINGS or PING).
    let mut c = tokio::net::TcpStream::connect(s.proxy).await.unwrap();
    c.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\0\0\0\x04\0\0\0\0\0")
        .await
        .unwrap();
    assert!(
        read_until_closed(&mut c).await.is_some(),
        "a silent h2c connection must be closed"
    );
    // A well-behaved client: served, then closed once idle.
    let (client, conn) = h2_client(s.proxy).await;
    let mut client = client.ready().await.unwrap();
    let (response, _) = client
        .send_request(
            Request::get(format!("http://{}/version", s.proxy))
                .body(())
                .unwrap(),
            true,
        )
        .unwrap();
    assert_eq!(response.await.unwrap().status(), 200);
    tokio::time::timeout(Duration::from_secs(20), conn)
        .await
        .expect("an idle h2c connection must be closed within 20 s")
        .unwrap()
        .ok();
}

#[tokio::test]
async fn an_h2c_request_slower_than_the_idle_timeout_is_not_cut_off() {
    // Livy takes longer than the idle timeout: a stream in flight keeps the
    // connection from being idle.
    let listener = TcpListener::bind("127.0.0.28:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let (stream, _) = listener.accept().await.unwrap();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(|_req: Request<Incoming>| async {
                    tokio::time::sleep(Duration::from_millis(1500)).await;
                    Ok::<_, hyper::Error>(Response::new(Full::new(Bytes::from_static(b"{}"))))
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    let node =
        LivyNode::parse(&format!("livy-8=http://{addr}"), AddressDefaults::default()).unwrap();
    let mut st = settings(Duration::from_secs(5));
    st.client_header_timeout = Duration::from_millis(300);
    let s = setup_with(vec![node.clone()], Some(&node), st).await;
    let (client, _conn) = h2_client(s.proxy).await;
    let mut client = client.ready().await.unwrap();
    let (response, _) = client
        .send_request(
            Request::get(format!("http://{}/version", s.proxy))
                .body(())
                .unwrap(),
            true,
        )
        .unwrap();
    let response = tokio::time::timeout(Duration::from_secs(20), response)
        .await
        .expect("an answer within 20 s")
        .expect("the slow request is answered, not cut off");
    assert_eq!(response.status(), 200);
}

#[tokio::test]
async fn h2c_streams_and_header_lists_are_limited_as_configured() {
    let a = Fake::start("livy-1", "127.0.0.21", ok_json("livy-1")).await;
    let mut st = settings(Duration::from_secs(5));
    st.h2_max_concurrent_streams = 7;
    st.h2_max_header_list_size = 4096;
    let s = setup_with(vec![a.node.clone()], Some(&a.node), st).await;
    let tcp = tokio::net::TcpStream::connect(s.proxy).await.unwrap();
    let (client, mut conn) = h2::client::handshake(tcp).await.unwrap();
    let mut client = client.ready().await.unwrap();
    let get = |extra: usize| {
        Request::get(format!("http://{}/version", s.proxy))
            .header("x-big", "v".repeat(extra))
            .body(())
            .unwrap()
    };
    let (response, _) = client.send_request(get(100), true).unwrap();
    // Driven here, so the connection's settings can be read afterwards.
    let response = tokio::select! {
        r = response => r.unwrap(),
        _ = &mut conn => panic!("the connection ended"),
    };
    assert_eq!(response.status(), 200);
    assert_eq!(conn.max_concurrent_send_streams(), 7);
    tokio::spawn(conn);
    // 8 KiB of headers: refused, by the proxy (431) or by the client
    // itself, which knows the proxy's limit.
    let mut client = client.ready().await.unwrap();
    let refused = match client.send_request(get(8192), true) {
        Err(_) => true,
        Ok((response, _)) => match tokio::time::timeout(Duration::from_secs(20), response)
            .await
            .expect("an answer within 20 s")
        {
            Err(_) => true,
            Ok(r) => r.status() == StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
        },
    };
    assert!(
        refused,
        "an 8 KiB header list must not get through a 4 KiB limit"
    );
}
