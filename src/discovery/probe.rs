//! Probing a static list of Livy servers: discovery without ZooKeeper.
//!
//! Each round asks every known node, concurrently, each request bounded by
//! the probe timeout:
//! 1. `GET /ha-status` (Cloudera's endpoint, off unless
//!    `livy.server.ha-status.enabled`): 200 = leader, 503 = follower;
//! 2. anything else (404: upstream Livy has no such endpoint; 307: Livy's
//!    passive filter redirected it like every other path) falls back to
//!    `GET <probe-path>` (default `/version`): 307/308 = passive, 2xx =
//!    active, and 401/403 = active too: Livy's passive filter runs before
//!    authentication, so a server that asks for credentials instead of
//!    redirecting is the one serving;
//! 3. anything else, a timeout or a refused connection = down.
//!
//! Probes go over the proxy's own client to Livy ([`Upstream`], a pool of
//! its own with the same connector), so an `https://` node is probed with
//! the same TLS settings (CA, server name, client certificate) as it is
//! proxied to.
//!
//! A node whose `/ha-status` turned out not to exist is remembered, so the
//! next rounds go straight to the probe path instead of paying two requests
//! every time; the memory expires after [`HA_STATUS_RECHECK`] so enabling
//! `/ha-status` on a running server is noticed.
//!
//! Choosing: the current leader is kept while it still says it is active (no
//! flapping between two servers that both answer during an election);
//! otherwise the first active node in configuration order wins. No active
//! node means no leader, and that includes "nobody answered at all": unlike
//! a ZooKeeper outage, where the latch's last word is still the best guess,
//! a probe that cannot reach any server has nothing to route to, so the view
//! says "no leader" with every node's reason and the proxy holds requests
//! rather than guess.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderValue, Request, StatusCode, header};
use http_body_util::{BodyExt, Limited};
use tokio_util::sync::CancellationToken;

use super::{DiscoveryConfig, HintListener, Publisher, Source};
use crate::http_proxy::body::UpstreamBody;
use crate::http_proxy::upstream::{Connector, Endpoint, Upstream};
use crate::node::{LivyNode, Origin};
use crate::tls::client::UpstreamTls;

/// How long a node known to lack `/ha-status` is probed on the probe path
/// only, before `/ha-status` is tried again.
pub const HA_STATUS_RECHECK: Duration = Duration::from_secs(60);

/// Cloudera's status endpoint: 200 on the leader, 503 on a follower.
const HA_STATUS_PATH: &str = "/ha-status";

/// At most this much of a probe answer's body is read (so the connection can
/// be reused); the rest is dropped with the connection.
const MAX_PROBE_BODY: usize = 64 * 1024;

/// What a probe learned about one node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Role {
    /// It serves: the active server.
    Active,
    /// It redirects or says it is a follower.
    Passive,
    /// It could not be asked, or answered something that is neither.
    Down(ProbeError),
}

/// Why a node counts as down: kept typed so callers (status pages, the TCP
/// proxy) can tell "unreachable" from "answered nonsense".
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ProbeError {
    /// No answer within the probe timeout.
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    /// The request failed (connection refused, reset, bad URI ...).
    #[error("{0}")]
    Request(String),
    /// The server answered with a status that means neither role.
    #[error("GET {path} answered {status}")]
    Status {
        /// The path asked.
        path: String,
        /// What it answered.
        status: StatusCode,
    },
}

/// The client probes are sent with: the proxy's HTTP/1.1 client to Livy.
pub type ProbeClient = Arc<Upstream>;

/// Most connections the probes keep (one per node is used).
const PROBE_CONNECTIONS: usize = 1024;

/// Builds the client probes use: connect (and TLS handshake) timeout =
/// probe timeout, idle connections kept for the next round.
pub fn probe_client(timeout: Duration, tls: Option<Arc<UpstreamTls>>) -> ProbeClient {
    Upstream::new(
        Connector::new(timeout, Duration::from_secs(60), tls),
        PROBE_CONNECTIONS,
        PROBE_CONNECTIONS,
    )
}

/// The error and its causes on one line (hyper's top-level message alone is
/// just "client error (Connect)").
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}

/// One GET with the timeout covering the answer and a bounded body read.
async fn get(
    client: &ProbeClient,
    node: &LivyNode,
    path: &str,
    timeout: Duration,
) -> Result<StatusCode, ProbeError> {
    let endpoint = Endpoint::of(&node.origin);
    let host = HeaderValue::from_maybe_shared(endpoint.authority().clone())
        .map_err(|e| ProbeError::Request(error_chain(&e)))?;
    let mut req = Request::get(path)
        .header(header::HOST, host)
        .header(header::USER_AGENT, "livy-proxy-probe")
        .body(UpstreamBody::Buffered(Bytes::new()))
        .map_err(|e| ProbeError::Request(error_chain(&e)))?;
    let exchange = async {
        let resp = client
            .send(&endpoint, &mut req, &mut false)
            .await
            .map_err(|e| ProbeError::Request(error_chain(&e)))?;
        let status = resp.status();
        // Only the status matters; reading the (small) body lets the pool
        // reuse the connection. A body error changes nothing.
        let _ = Limited::new(resp.into_body(), MAX_PROBE_BODY)
            .collect()
            .await;
        Ok(status)
    };
    tokio::time::timeout(timeout, exchange)
        .await
        .unwrap_or(Err(ProbeError::Timeout(timeout)))
}

/// Probes one node, trying `/ha-status` first only when `try_ha_status`.
/// Returns the role and whether `/ha-status` answered meaningfully
/// (`Some(false)`: it does not exist there; `None`: not asked or no answer).
pub async fn probe_node(
    client: &ProbeClient,
    node: &LivyNode,
    probe_path: &str,
    timeout: Duration,
    try_ha_status: bool,
) -> (Role, Option<bool>) {
    let mut has_ha_status = None;
    if try_ha_status {
        match get(client, node, HA_STATUS_PATH, timeout).await {
            Ok(StatusCode::OK) => return (Role::Active, Some(true)),
            Ok(StatusCode::SERVICE_UNAVAILABLE) => return (Role::Passive, Some(true)),
            // 404, a passive's 307, an auth challenge ...: no usable
            // /ha-status here; the probe path decides.
            Ok(_) => has_ha_status = Some(false),
            // Unreachable: asking again on another path would only double
            // the wait.
            Err(e) => return (Role::Down(e), None),
        }
    }
    let role = match get(client, node, probe_path, timeout).await {
        Ok(s) if s.is_success() || s == StatusCode::UNAUTHORIZED || s == StatusCode::FORBIDDEN => {
            Role::Active
        }
        Ok(s) if s == StatusCode::TEMPORARY_REDIRECT || s == StatusCode::PERMANENT_REDIRECT => {
            Role::Passive
        }
        Ok(status) => Role::Down(ProbeError::Status {
            path: probe_path.to_string(),
            status,
        }),
        Err(e) => Role::Down(e),
    };
    (role, has_ha_status)
}

/// Probes a node list round after round, remembering which nodes lack
/// `/ha-status`. Reusable by anything that needs "who is active right now"
/// without ZooKeeper (discovery's probe loop, the TCP proxy).
pub struct Prober {
    client: ProbeClient,
    probe_path: String,
    timeout: Duration,
    /// Nodes without `/ha-status`, and when to try it again.
    no_ha_status: Mutex<HashMap<Origin, Instant>>,
}

impl Prober {
    /// A prober asking `probe_path` where `/ha-status` is missing, each
    /// request bounded by `timeout`, `https://` nodes with `tls`.
    pub fn new(probe_path: &str, timeout: Duration, tls: Option<Arc<UpstreamTls>>) -> Self {
        Prober {
            client: probe_client(timeout, tls),
            probe_path: probe_path.to_string(),
            timeout,
            no_ha_status: Mutex::new(HashMap::new()),
        }
    }

    fn should_try_ha_status(&self, origin: &Origin) -> bool {
        match self.no_ha_status.lock() {
            Ok(map) => map.get(origin).is_none_or(|until| Instant::now() >= *until),
            Err(_) => true,
        }
    }

    fn remember(&self, origin: &Origin, has_ha_status: Option<bool>) {
        let Ok(mut map) = self.no_ha_status.lock() else {
            return;
        };
        match has_ha_status {
            Some(true) => {
                map.remove(origin);
            }
            Some(false) => {
                map.insert(origin.clone(), Instant::now() + HA_STATUS_RECHECK);
            }
            None => {}
        }
    }

    /// Probes one node (see the module docs for the rules).
    pub async fn probe(&self, node: &LivyNode) -> Role {
        let try_ha = self.should_try_ha_status(&node.origin);
        let (role, has_ha_status) =
            probe_node(&self.client, node, &self.probe_path, self.timeout, try_ha).await;
        self.remember(&node.origin, has_ha_status);
        role
    }

    /// One round: every node probed concurrently, results in the order of
    /// `nodes`.
    pub async fn probe_once(&self, nodes: &[LivyNode]) -> Vec<(LivyNode, Role)> {
        let probes = nodes
            .iter()
            .map(|n| async move { (n.clone(), self.probe(n).await) });
        futures_util::future::join_all(probes).await
    }
}

/// The leader after a round: the current one if still active, else the
/// first active node; `Err` with every node's state when none is active.
pub fn choose(
    current: Option<&LivyNode>,
    results: &[(LivyNode, Role)],
) -> Result<LivyNode, String> {
    let active: Vec<&LivyNode> = results
        .iter()
        .filter(|(_, r)| *r == Role::Active)
        .map(|(n, _)| n)
        .collect();
    if active.len() > 1 {
        tracing::debug!(active = ?active.iter().map(|n| n.id.as_str()).collect::<Vec<_>>(), "more than one Livy server says it is active");
    }
    if let Some(cur) = current
        && let Some(same) = active.iter().find(|n| n.origin == cur.origin)
    {
        return Ok((*same).clone());
    }
    if let Some(first) = active.first() {
        return Ok((*first).clone());
    }
    let summary = results
        .iter()
        .map(|(n, r)| match r {
            Role::Active => format!("{}: active", n.id),
            Role::Passive => format!("{}: passive", n.id),
            Role::Down(why) => format!("{}: down ({why})", n.id),
        })
        .collect::<Vec<_>>()
        .join("; ");
    Err(format!(
        "no active Livy server among {} probed: {summary}",
        results.len()
    ))
}

/// A role without its reason, to log changes of role and not of wording.
fn kind(role: &Role) -> &'static str {
    match role {
        Role::Active => "active",
        Role::Passive => "passive",
        Role::Down(_) => "down",
    }
}

/// Probes the static list every `probe_interval` until `shutdown`,
/// publishing the leader it finds (see the module docs). A hint from the
/// proxy (the leader redirected to another known node) is checked at once:
/// the named node is probed and published if it says it is active;
/// otherwise every node is probed, as in a round. A node is never published
/// on a redirect's word alone.
pub async fn run(
    config: DiscoveryConfig,
    publisher: Publisher,
    mut hints: HintListener,
    shutdown: CancellationToken,
) {
    let prober = Prober::new(
        &config.probe_path,
        config.probe_timeout,
        config.upstream_tls.clone(),
    );
    let mut roles = RoleLog::default();
    tracing::info!(nodes = config.nodes.load().len(), interval = ?config.probe_interval, "probing the static node list");
    let mut next_round = tokio::time::Instant::now();
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep_until(next_round) => {
                let nodes = config.nodes.snapshot();
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = round(&prober, &nodes, &publisher, &mut roles) => {}
                }
                next_round = tokio::time::Instant::now() + config.probe_interval;
            }
            hint = hints.next() => {
                if hint.concerns(&publisher.current()) {
                    let nodes = config.nodes.snapshot();
                    tokio::select! {
                        _ = shutdown.cancelled() => return,
                        _ = check_hint(&prober, &nodes, &publisher, &mut roles, &hint) => {}
                    }
                }
                hints.answered(&hint);
            }
        }
    }
}

/// Acts on a hint: the named node confirmed by a probe of its own, else a
/// full round decides (which keeps the current leader if it still says it
/// is active: the redirect was then a confused passive's, or a moment's).
async fn check_hint(
    prober: &Prober,
    nodes: &[LivyNode],
    publisher: &Publisher,
    roles: &mut RoleLog,
    hint: &super::Hint,
) {
    let role = prober.probe(&hint.named).await;
    roles.note(&hint.named, &role);
    if role == Role::Active {
        tracing::info!(from = %hint.from, named = %hint.named, "the leader redirected to a node that confirms it is active");
        publisher.set_leader(Some(hint.named.clone()), Source::Probe, None);
        return;
    }
    tracing::info!(from = %hint.from, named = %hint.named, role = kind(&role), "the leader redirected to a node that is not active: probing every node");
    round(prober, nodes, publisher, roles).await;
}

/// One round over every node, published.
async fn round(prober: &Prober, nodes: &[LivyNode], publisher: &Publisher, roles: &mut RoleLog) {
    let results = prober.probe_once(nodes).await;
    for (node, role) in &results {
        roles.note(node, role);
    }
    publisher.status.set_participants(
        results
            .iter()
            .map(|(node, role)| super::Participant {
                id: node.id.clone(),
                at: node.origin.to_string(),
                role: kind(role).to_string(),
            })
            .collect(),
    );
    let current = publisher.current().leader.map(|l| l.node);
    match choose(current.as_deref(), &results) {
        Ok(node) => publisher.set_leader(Some(node), Source::Probe, None),
        Err(problem) => publisher.set_leader(None, Source::Probe, Some(problem)),
    }
}

/// Each node's last role, to log changes of role once.
#[derive(Default)]
struct RoleLog(HashMap<Origin, &'static str>);

impl RoleLog {
    fn note(&mut self, node: &LivyNode, role: &Role) {
        let now = kind(role);
        if self.0.insert(node.origin.clone(), now) != Some(now) {
            match role {
                Role::Down(why) => {
                    tracing::info!(node = %node, role = now, reason = %why, "probe: node role")
                }
                _ => tracing::info!(node = %node, role = now, "probe: node role"),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::node::AddressDefaults;

    fn n(spec: &str) -> LivyNode {
        LivyNode::parse(spec, AddressDefaults::default()).unwrap()
    }

    #[test]
    fn keeps_the_current_leader_while_active() {
        let (a, b) = (n("a=http://h1:1"), n("b=http://h2:1"));
        let results = vec![(a.clone(), Role::Active), (b.clone(), Role::Active)];
        assert_eq!(choose(Some(&b), &results).unwrap().id, "b");
        assert_eq!(choose(None, &results).unwrap().id, "a");
        // The current leader went passive: the first active one wins.
        let results = vec![(a.clone(), Role::Active), (b.clone(), Role::Passive)];
        assert_eq!(choose(Some(&b), &results).unwrap().id, "a");
    }

    #[test]
    fn no_active_node_is_an_error_with_a_summary() {
        let results = vec![
            (n("a=http://h1:1"), Role::Passive),
            (
                n("b=http://h2:1"),
                Role::Down(ProbeError::Request("refused".into())),
            ),
        ];
        let e = choose(None, &results).unwrap_err();
        assert!(
            e.contains("no active Livy server among 2 probed")
                && e.contains("a: passive")
                && e.contains("b: down (refused)"),
            "{e}"
        );
    }

    #[test]
    fn nobody_answering_is_no_leader_even_with_a_current_one() {
        let a = n("a=http://h1:1");
        let results = vec![(
            a.clone(),
            Role::Down(ProbeError::Timeout(Duration::from_secs(1))),
        )];
        assert!(choose(Some(&a), &results).is_err());
    }
}

#[cfg(test)]
mod server_tests {
    //! `probe_node` and `Prober` against a tiny HTTP/1.1 server whose
    //! answers are a fixed path -> status table, recording what was asked.
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    use super::*;
    use crate::node::AddressDefaults;

    type Log = Arc<Mutex<Vec<String>>>;

    async fn server(routes: &[(&'static str, u16)]) -> (LivyNode, Log) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let routes: Arc<Vec<(&'static str, u16)>> = Arc::new(routes.to_vec());
        let log: Log = Arc::default();
        let log2 = log.clone();
        tokio::spawn(async move {
            while let Ok((mut sock, _)) = listener.accept().await {
                let (routes, log) = (routes.clone(), log2.clone());
                tokio::spawn(async move {
                    let mut buf = Vec::new();
                    loop {
                        let mut chunk = [0u8; 1024];
                        let Ok(n) = sock.read(&mut chunk).await else {
                            return;
                        };
                        if n == 0 {
                            return;
                        }
                        buf.extend_from_slice(&chunk[..n]);
                        while let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                            let head = String::from_utf8_lossy(&buf[..end]).to_string();
                            buf.drain(..end + 4);
                            let path = head.split(' ').nth(1).unwrap_or("").to_string();
                            let status = routes
                                .iter()
                                .find(|(p, _)| *p == path)
                                .map_or(404, |(_, s)| *s);
                            log.lock().unwrap().push(path);
                            let resp =
                                format!("HTTP/1.1 {status} X\r\ncontent-length: 2\r\n\r\nok");
                            if sock.write_all(resp.as_bytes()).await.is_err() {
                                return;
                            }
                        }
                    }
                });
            }
        });
        let node =
            LivyNode::parse(&format!("n=http://{addr}"), AddressDefaults::default()).unwrap();
        (node, log)
    }

    fn asked(log: &Log) -> Vec<String> {
        std::mem::take(&mut *log.lock().unwrap())
    }

    const T: Duration = Duration::from_secs(2);

    #[tokio::test]
    async fn ha_status_decides_when_it_exists() {
        let (leader, log) = server(&[("/ha-status", 200), ("/version", 307)]).await;
        let prober = Prober::new("/version", T, None);
        assert_eq!(prober.probe(&leader).await, Role::Active);
        assert_eq!(asked(&log), ["/ha-status"]);
        let (follower, _) = server(&[("/ha-status", 503), ("/version", 200)]).await;
        assert_eq!(prober.probe(&follower).await, Role::Passive);
    }

    #[tokio::test]
    async fn without_ha_status_the_probe_path_decides_and_is_remembered() {
        let (active, log) = server(&[("/version", 200)]).await;
        let prober = Prober::new("/version", T, None);
        assert_eq!(prober.probe(&active).await, Role::Active);
        assert_eq!(asked(&log), ["/ha-status", "/version"]);
        assert_eq!(prober.probe(&active).await, Role::Active);
        assert_eq!(asked(&log), ["/version"], "/ha-status is not asked again");
    }

    #[tokio::test]
    async fn a_redirect_means_passive_and_auth_means_active() {
        // Livy's passive filter redirects /ha-status like everything else.
        let (passive, log) = server(&[("/ha-status", 307), ("/version", 307)]).await;
        let prober = Prober::new("/version", T, None);
        assert_eq!(prober.probe(&passive).await, Role::Passive);
        assert_eq!(asked(&log), ["/ha-status", "/version"]);
        let (authenticating, _) = server(&[("/version", 401)]).await;
        assert_eq!(prober.probe(&authenticating).await, Role::Active);
        let (broken, _) = server(&[("/version", 500)]).await;
        assert!(matches!(
            prober.probe(&broken).await,
            Role::Down(ProbeError::Status { .. })
        ));
    }

    #[tokio::test]
    async fn refused_connection_is_down_and_a_round_keeps_order() {
        let closed = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap()
        };
        let dead =
            LivyNode::parse(&format!("dead=http://{closed}"), AddressDefaults::default()).unwrap();
        let (active, _) = server(&[("/version", 200)]).await;
        let prober = Prober::new("/version", T, None);
        let round = prober.probe_once(&[dead.clone(), active.clone()]).await;
        assert!(matches!(round[0], (ref n, Role::Down(ProbeError::Request(_))) if *n == dead));
        assert_eq!(round[1], (active.clone(), Role::Active));
        assert_eq!(choose(None, &round).unwrap(), active);
    }
}
