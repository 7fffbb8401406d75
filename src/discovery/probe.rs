//! Probing a static list of Livy servers: discovery without ZooKeeper.
//!
//! Each round asks every known node, concurrently and with a short timeout:
//! 1. `GET /ha-status` (Cloudera's endpoint): 200 = leader, 503 = follower;
//!    a 307/308 means Livy's passive filter redirected it: passive;
//! 2. otherwise (404: upstream Livy has no such endpoint) `GET <probe-path>`
//!    (default `/version`): 307/308 = passive, 2xx = active, and 401/403 =
//!    active too (a server that authenticates instead of redirecting is the
//!    one serving: the passive filter runs before authentication);
//! 3. anything else, a timeout or a refused connection = down.
//!
//! The current leader is kept while it still says it is active (no flapping
//! between two servers that both answer during an election); otherwise the
//! first active node in configuration order wins. No active node means no
//! leader: the proxy holds requests rather than guess.

use std::time::Duration;

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::Empty;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use tokio_util::sync::CancellationToken;

use super::{DiscoveryConfig, Publisher, Source};
use crate::node::LivyNode;

/// What a probe learned about one node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Role {
    /// It serves: the active server.
    Active,
    /// It redirects or says it is a follower.
    Passive,
    /// It could not be asked, or answered nonsense; the reason.
    Down(String),
}

/// The HTTP client probes are sent with (HTTP only for now; an HTTPS
/// connector plugs in here).
pub type ProbeClient = Client<HttpConnector, Empty<Bytes>>;

/// A client for probes: short connect timeout, small pool.
pub fn probe_client(timeout: Duration) -> ProbeClient {
    let mut connector = HttpConnector::new();
    connector.set_connect_timeout(Some(timeout));
    connector.set_nodelay(true);
    Client::builder(TokioExecutor::new())
        .pool_idle_timeout(Duration::from_secs(30))
        .pool_max_idle_per_host(1)
        .pool_timer(TokioTimer::new())
        .build(connector)
}

async fn get(
    client: &ProbeClient,
    node: &LivyNode,
    path: &str,
    timeout: Duration,
) -> Result<StatusCode, String> {
    let uri = format!("{}{}", node.origin, path);
    let req = Request::get(uri)
        .header(http::header::USER_AGENT, "livy-proxy-probe")
        .body(Empty::new())
        .map_err(|e| e.to_string())?;
    match tokio::time::timeout(timeout, client.request(req)).await {
        // The body is dropped unread: the connection is not reused, which
        // is fine at one probe per interval.
        Ok(Ok(resp)) => Ok(resp.status()),
        Ok(Err(e)) => Err(format!(
            "{e}: {}",
            std::error::Error::source(&e)
                .map(|s| s.to_string())
                .unwrap_or_default()
        )),
        Err(_) => Err(format!("no answer within {timeout:?}")),
    }
}

/// Probes one node (see the module docs for the rules).
pub async fn probe_node(
    client: &ProbeClient,
    node: &LivyNode,
    probe_path: &str,
    timeout: Duration,
) -> Role {
    match get(client, node, "/ha-status", timeout).await {
        Ok(StatusCode::OK) => return Role::Active,
        Ok(StatusCode::SERVICE_UNAVAILABLE) => return Role::Passive,
        Ok(s) if s == StatusCode::TEMPORARY_REDIRECT || s == StatusCode::PERMANENT_REDIRECT => {
            return Role::Passive;
        }
        Ok(_) => {}
        Err(e) => return Role::Down(e),
    }
    match get(client, node, probe_path, timeout).await {
        Ok(s) if s.is_success() || s == StatusCode::UNAUTHORIZED || s == StatusCode::FORBIDDEN => {
            Role::Active
        }
        Ok(s) if s.is_redirection() => Role::Passive,
        Ok(s) => Role::Down(format!("GET {probe_path} answered {s}")),
        Err(e) => Role::Down(e),
    }
}

/// One round: every node probed concurrently, results in configuration order.
pub async fn probe_once(
    client: &ProbeClient,
    nodes: &[LivyNode],
    probe_path: &str,
    timeout: Duration,
) -> Vec<(LivyNode, Role)> {
    let probes = nodes.iter().map(|n| async move {
        let role = probe_node(client, n, probe_path, timeout).await;
        (n.clone(), role)
    });
    futures_util::future::join_all(probes).await
}

/// The leader after a round: the current one if still active, else the
/// first active node; `Err` with a summary when none is active.
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
        tracing::warn!(active = ?active.iter().map(|n| n.id.as_str()).collect::<Vec<_>>(), "more than one Livy server says it is active");
    }
    if let Some(cur) = current
        && active.iter().any(|n| n.origin == cur.origin)
    {
        return Ok(cur.clone());
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

/// Probes the static list every `probe_interval` until `shutdown`,
/// publishing the leader it finds.
pub async fn run(config: DiscoveryConfig, publisher: Publisher, shutdown: CancellationToken) {
    let client = probe_client(config.probe_timeout);
    tracing::info!(nodes = config.nodes.len(), interval = ?config.probe_interval, "probing the static node list");
    loop {
        let results = tokio::select! {
            _ = shutdown.cancelled() => return,
            r = probe_once(&client, &config.nodes, &config.probe_path, config.probe_timeout) => r,
        };
        let current = publisher.current().leader.map(|l| l.node);
        match choose(current.as_ref(), &results) {
            Ok(node) => publisher.set_leader(Some(node), Source::Probe, None),
            Err(problem) => {
                tracing::debug!(%problem, "probe round found no active server");
                publisher.set_leader(None, Source::Probe, Some(problem));
            }
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(config.probe_interval) => {}
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
    }

    #[test]
    fn no_active_node_is_an_error_with_a_summary() {
        let results = vec![
            (n("a=http://h1:1"), Role::Passive),
            (n("b=http://h2:1"), Role::Down("refused".into())),
        ];
        let e = choose(None, &results).unwrap_err();
        assert!(
            e.contains("a: passive") && e.contains("b: down (refused)"),
            "{e}"
        );
    }
}
