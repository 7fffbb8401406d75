//! Discovery: which Livy server is active right now.
//!
//! Exactly one task owns this question and publishes its answer on a
//! `tokio::sync::watch` channel as a [`LeaderView`]; every proxy holds a
//! receiver and never talks to ZooKeeper or probes a server itself. Data
//! flows one way: ZooKeeper (or probing) -> `LeaderView` -> proxies.
//!
//! Two sources feed the view:
//! - [`zk`]: Livy's Curator `LeaderLatch` in ZooKeeper, the truth in HA mode;
//! - [`probe`]: polling a static list of servers (`/ha-status`, else a cheap
//!   GET where 307 means passive), used without ZooKeeper and as the fallback
//!   while ZooKeeper cannot be reached at start.
//!
//! One feedback path runs the other way ([`hint`]): a proxy that meets a
//! passive's redirect from the node the view calls active reports it, and
//! discovery checks at once (a probe, or a ZooKeeper `sync` and re-read)
//! instead of at its next round. The proxy reports; discovery decides.

pub mod hint;
pub mod latch;
pub mod probe;
pub mod status;
pub mod zk;
#[cfg(feature = "kerberos")]
pub mod zk_kerberos;
pub mod zk_security;

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::node::{AddressDefaults, LivyNode, NodeList};
pub use hint::{Hint, HintListener, Hints};
pub use status::{LeaderChange, Participant, Status};

/// Where the current view comes from, for logs, readiness and status.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Source {
    /// Nothing known yet.
    None,
    /// Livy's leader latch in ZooKeeper.
    ZooKeeper,
    /// Polling the static node list.
    Probe,
}

impl Source {
    /// The source as `/status` and logs name it.
    pub fn as_str(self) -> &'static str {
        match self {
            Source::None => "none",
            Source::ZooKeeper => "zookeeper",
            Source::Probe => "probe",
        }
    }
}

/// The active Livy server as discovery last saw it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Leader {
    /// The node traffic goes to (resolved from the latch participant id);
    /// shared, so every request can hold it without copying its strings.
    pub node: Arc<LivyNode>,
    /// When this node became the leader in our view.
    pub since: SystemTime,
}

/// Everything a proxy needs to decide where a request goes, published by
/// discovery on every change.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LeaderView {
    /// The active server, if one is known. `None` while an election is under
    /// way, when nobody holds the latch, or when the leader's id maps to no
    /// address (see `problem`).
    pub leader: Option<Leader>,
    /// True when discovery lost contact with its source (ZooKeeper
    /// disconnected, all probes failing) and `leader` is the last known one.
    pub stale: bool,
    /// Which source produced this view.
    pub source: Source,
    /// A human-readable reason when something is wrong (unmapped participant
    /// id, ZooKeeper unreachable, latch path missing). Shown in readiness.
    pub problem: Option<String>,
    /// Increases by one every time `leader` changes, so a proxy can tell
    /// "the leader moved" from "the same leader, republished".
    pub generation: u64,
    /// The leader discovery named before `leader` (kept across an election
    /// gap with no leader): known not to lead while `leader` does, so a
    /// new leader's redirect back to it (its Livy role flips a moment
    /// after its latch) is waited out, never followed.
    pub deposed: Option<Arc<LivyNode>>,
}

impl LeaderView {
    /// The view before discovery has said anything.
    pub fn unknown() -> Self {
        LeaderView {
            leader: None,
            stale: false,
            source: Source::None,
            problem: Some("discovery has not run yet".to_string()),
            generation: 0,
            deposed: None,
        }
    }

    /// A view naming `node` (or nobody) that no discovery source produced:
    /// for tests and embedders that drive the proxies with a leader they
    /// choose themselves.
    pub fn fixed(node: Option<LivyNode>, generation: u64) -> Self {
        LeaderView {
            problem: node.is_none().then(|| "no leader given".to_string()),
            leader: node.map(|node| Leader {
                node: Arc::new(node),
                since: SystemTime::now(),
            }),
            stale: false,
            source: Source::None,
            generation,
            deposed: None,
        }
    }
}

/// The receiving end every proxy holds.
pub type LeaderRx = watch::Receiver<LeaderView>;

/// What discovery needs from the configuration.
#[derive(Clone, Debug)]
pub struct DiscoveryConfig {
    /// ZooKeeper connect string `host:port,host:port[/chroot]`; `None` means
    /// static-list probing only.
    pub zookeeper: Option<String>,
    /// The Curator latch path Livy's servers join (default `/livy_ha/leader`).
    pub leader_path: String,
    /// ZooKeeper session timeout the proxy asks for.
    pub zk_session_timeout: Duration,
    /// TLS and SASL for the ZooKeeper session.
    pub zk_security: zk_security::ZkSecurity,
    /// The known Livy servers: id table, static list and redirect
    /// allow-list; live (a reload replaces them).
    pub nodes: NodeList,
    /// Scheme and port for a participant id read as an address.
    pub defaults: AddressDefaults,
    /// How often the static list is probed.
    pub probe_interval: Duration,
    /// How long one probe request may take.
    pub probe_timeout: Duration,
    /// The cheap GET used when a server has no `/ha-status`.
    pub probe_path: String,
    /// TLS for probing `https://` nodes (none: they count as down).
    pub upstream_tls: Option<std::sync::Arc<crate::tls::client::UpstreamTls>>,
}

/// A running discovery: the view proxies read, and where they report what
/// they saw.
pub struct Discovery {
    /// The leader channel every proxy holds a receiver of.
    pub leader: LeaderRx,
    /// Where the HTTP proxy reports a passive's redirect.
    pub hints: Hints,
    /// Changes, participants and session state, for `/status` and `/metrics`.
    pub status: Arc<Status>,
}

/// Starts discovery on the current runtime. ZooKeeper is used when
/// configured, with probing of the static list as the fallback while
/// ZooKeeper cannot be reached at start; otherwise the static list is
/// probed. Runs until `shutdown` is cancelled.
pub fn start(config: DiscoveryConfig, shutdown: CancellationToken) -> Discovery {
    let (tx, rx) = watch::channel(LeaderView::unknown());
    let publisher = Publisher::new(tx);
    let status = publisher.status.clone();
    let (hints, listener) = Hints::channel();
    match config.zookeeper.clone() {
        Some(connect) => {
            tokio::spawn(zk::run(connect, config, publisher, listener, shutdown));
        }
        None => {
            tokio::spawn(probe::run(config, publisher, listener, shutdown));
        }
    }
    Discovery {
        leader: rx,
        hints,
        status,
    }
}

/// [`start`] for callers that only read the view (no proxy reports hints).
pub fn spawn(config: DiscoveryConfig, shutdown: CancellationToken) -> LeaderRx {
    start(config, shutdown).leader
}

/// The single writer of the [`LeaderView`]: keeps `generation` and `since`
/// consistent and logs every leader change once.
#[derive(Clone)]
pub struct Publisher {
    tx: Arc<watch::Sender<LeaderView>>,
    /// Where changes, participants and the session state are recorded.
    pub status: Arc<Status>,
}

impl Publisher {
    /// Wraps the sending half of the leader channel.
    pub fn new(tx: watch::Sender<LeaderView>) -> Self {
        Publisher {
            tx: Arc::new(tx),
            status: Arc::default(),
        }
    }

    /// The view as last published.
    pub fn current(&self) -> LeaderView {
        self.tx.borrow().clone()
    }

    /// Publishes `node` (or no leader) as the leader from `source`, fresh.
    /// `since` and `generation` move only when the leader actually changes.
    pub fn set_leader(&self, node: Option<LivyNode>, source: Source, problem: Option<String>) {
        self.tx.send_if_modified(|view| {
            let old_id = view.leader.as_ref().map(|l| &*l.node);
            let changed = old_id != node.as_ref();
            if changed {
                view.generation += 1;
                let old = old_id.map_or_else(|| "none".to_string(), |n| n.to_string());
                let new = node
                    .as_ref()
                    .map_or_else(|| "none".to_string(), |n| n.to_string());
                tracing::info!(old = %old, new = %new, source = ?source, "leader changed");
                self.status.leader_changed(LeaderChange {
                    at: SystemTime::now(),
                    from: old_id.map(|n| n.to_string()),
                    to: node.as_ref().map(|n| n.to_string()),
                    source: source.as_str(),
                });
                let old = view.leader.take().map(|l| l.node);
                view.leader = node.map(|node| Leader {
                    node: Arc::new(node),
                    since: SystemTime::now(),
                });
                if old.is_some() {
                    view.deposed = old;
                }
                if let Some(new) = &view.leader
                    && view
                        .deposed
                        .as_ref()
                        .is_some_and(|d| d.origin == new.node.origin)
                {
                    view.deposed = None;
                }
            }
            let before = (view.stale, view.source, view.problem.clone());
            view.stale = false;
            view.source = source;
            view.problem = problem;
            changed || before != (view.stale, view.source, view.problem.clone())
        });
    }

    /// Keeps the last leader but marks the view stale (source unreachable),
    /// with the reason.
    pub fn mark_stale(&self, problem: String) {
        self.tx.send_if_modified(|view| {
            let changed = !view.stale || view.problem.as_deref() != Some(problem.as_str());
            if changed {
                tracing::warn!(problem = %problem, leader = ?view.leader.as_ref().map(|l| l.node.id.clone()), "discovery stale: keeping last known leader");
            }
            view.stale = true;
            view.problem = Some(problem);
            changed
        });
    }

    /// A receiver of the channel, for tasks that also need to read it.
    pub fn subscribe(&self) -> LeaderRx {
        self.tx.subscribe()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::node::AddressDefaults;

    fn node(spec: &str) -> LivyNode {
        LivyNode::parse(spec, AddressDefaults::default()).unwrap()
    }

    fn deposed(p: &Publisher) -> Option<String> {
        p.current().deposed.map(|d| d.id.clone())
    }

    #[test]
    fn the_last_leader_is_remembered_as_deposed_across_an_election_gap() {
        let (tx, _rx) = watch::channel(LeaderView::unknown());
        let p = Publisher::new(tx);
        let (a, b) = (
            node("a=http://a.example:8998"),
            node("b=http://b.example:8998"),
        );
        p.set_leader(Some(a.clone()), Source::ZooKeeper, None);
        assert_eq!(deposed(&p), None);
        p.set_leader(Some(b.clone()), Source::ZooKeeper, None);
        assert_eq!(deposed(&p).as_deref(), Some("a"));
        // B → none → A: B lost the latch, so the gap remembers B, and A
        // is never its own deposed.
        p.set_leader(None, Source::ZooKeeper, None);
        assert_eq!(deposed(&p).as_deref(), Some("b"));
        p.set_leader(Some(a.clone()), Source::ZooKeeper, None);
        assert_eq!(deposed(&p).as_deref(), Some("b"));
        p.set_leader(Some(b.clone()), Source::ZooKeeper, None);
        assert_eq!(deposed(&p).as_deref(), Some("a"));
        p.set_leader(None, Source::ZooKeeper, None);
        p.set_leader(Some(b), Source::ZooKeeper, None);
        assert_eq!(
            deposed(&p),
            None,
            "the leader back after a gap is not deposed"
        );
    }
}
