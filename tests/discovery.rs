//! Discovery in-process (the library's `discovery::spawn`) against the real
//! ZooKeeper and the real Curator LeaderLatch: every fault it must survive.

mod common;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{Ensemble, LatchMember, SimCluster, ZooKeeper};
use livy_proxy::discovery::{self, DiscoveryConfig, LeaderRx, LeaderView, Source};
use livy_proxy::node::{AddressDefaults, LivyNode};
use tokio_util::sync::CancellationToken;

const DEADLINE: Duration = Duration::from_secs(60);
const PATH: &str = "/livy_ha/leader";

fn nodes(ids: &[&str]) -> Arc<Vec<LivyNode>> {
    Arc::new(
        ids.iter()
            .enumerate()
            .map(|(i, id)| {
                LivyNode::parse(
                    &format!("{id}=http://127.0.0.{}:8998", 11 + i),
                    AddressDefaults::default(),
                )
                .unwrap()
            })
            .collect(),
    )
}

fn config(zk: Option<String>, nodes: Arc<Vec<LivyNode>>) -> DiscoveryConfig {
    DiscoveryConfig {
        zookeeper: zk,
        leader_path: PATH.to_string(),
        zk_session_timeout: Duration::from_secs(4),
        zk_security: Default::default(),
        nodes: nodes.into(),
        defaults: AddressDefaults::default(),
        probe_interval: Duration::from_millis(200),
        probe_timeout: Duration::from_secs(1),
        probe_path: "/version".to_string(),
    }
}

struct Running {
    rx: LeaderRx,
    stop: CancellationToken,
}

impl Drop for Running {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

fn start(config: DiscoveryConfig) -> Running {
    let stop = CancellationToken::new();
    let rx = discovery::spawn(config, stop.clone());
    Running { rx, stop }
}

/// Waits until the view satisfies `pred`; panics with the last view.
async fn wait_view(
    rx: &mut LeaderRx,
    what: &str,
    pred: impl Fn(&LeaderView) -> bool,
) -> LeaderView {
    let found = match tokio::time::timeout(DEADLINE, rx.wait_for(|v| pred(v))).await {
        Ok(Ok(v)) => Some(v.clone()),
        _ => None,
    };
    found.unwrap_or_else(|| {
        panic!(
            "{what}: not within {DEADLINE:?}; last view: {:?}",
            *rx.borrow()
        )
    })
}

fn leader_id(v: &LeaderView) -> Option<&str> {
    v.leader.as_ref().map(|l| l.node.id.as_str())
}

/// Every view the receiver sees from now on, until dropped: for assertions
/// about what happened along the way (a view published and replaced while
/// the test was busy elsewhere).
struct Recorder {
    views: Arc<Mutex<Vec<LeaderView>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Recorder {
    fn start(rx: &LeaderRx) -> Recorder {
        let mut rx = rx.clone();
        rx.mark_unchanged();
        let views: Arc<Mutex<Vec<LeaderView>>> = Arc::default();
        let seen = views.clone();
        let task = tokio::spawn(async move {
            while rx.changed().await.is_ok() {
                let v = rx.borrow_and_update().clone();
                seen.lock().unwrap().push(v);
            }
        });
        Recorder { views, task }
    }

    fn views(&self) -> Vec<LeaderView> {
        self.views.lock().unwrap().clone()
    }
}

impl Drop for Recorder {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn join(zk: &str, id: &str) -> LatchMember {
    let m = LatchMember::join(zk, PATH, id, 4000);
    assert!(m.wait_ready(), "{id} joined");
    m
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn follows_the_leader_through_sigterm_and_sigkill() {
    let zk = ZooKeeper::start();
    let mut a = join(&zk.connect_string(), "livy-1");
    assert!(a.wait_leader(DEADLINE));
    let mut b = join(&zk.connect_string(), "livy-2");
    let _c = join(&zk.connect_string(), "livy-3");
    let mut d = start(config(
        Some(zk.connect_string()),
        nodes(&["livy-1", "livy-2", "livy-3"]),
    ));
    let v = wait_view(&mut d.rx, "livy-1 leads", |v| {
        leader_id(v) == Some("livy-1")
    })
    .await;
    assert_eq!(v.source, Source::ZooKeeper);
    assert!(!v.stale);
    assert_eq!(v.leader.unwrap().node.origin.host, "127.0.0.11");

    a.terminate(); // clean: the node goes at once
    wait_view(&mut d.rx, "livy-2 after SIGTERM", |v| {
        leader_id(v) == Some("livy-2")
    })
    .await;
    b.kill(); // crash: the node goes when the session expires
    wait_view(&mut d.rx, "livy-3 after SIGKILL", |v| {
        leader_id(v) == Some("livy-3")
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn latch_path_created_after_start() {
    let zk = ZooKeeper::start();
    let mut d = start(config(Some(zk.connect_string()), nodes(&["livy-1"])));
    let v = wait_view(&mut d.rx, "a reason for no leader", |v| {
        v.problem.is_some() && v.source == Source::ZooKeeper
    })
    .await;
    assert!(v.leader.is_none());
    assert!(v.problem.unwrap().contains("does not exist"));
    let _a = join(&zk.connect_string(), "livy-1");
    wait_view(&mut d.rx, "livy-1 once the latch exists", |v| {
        leader_id(v) == Some("livy-1")
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zookeeper_restart_then_leader_change_is_seen() {
    // The lost-watch bug: a persistent watch would miss the change below.
    let mut zk = ZooKeeper::start();
    let mut a = join(&zk.connect_string(), "livy-1");
    assert!(a.wait_leader(DEADLINE));
    let _b = join(&zk.connect_string(), "livy-2");
    let mut d = start(config(
        Some(zk.connect_string()),
        nodes(&["livy-1", "livy-2"]),
    ));
    wait_view(&mut d.rx, "livy-1", |v| leader_id(v) == Some("livy-1")).await;
    zk.stop();
    let v = wait_view(&mut d.rx, "stale while ZooKeeper is down", |v| v.stale).await;
    assert_eq!(leader_id(&v), Some("livy-1"), "the last leader is kept");
    zk.start_again();
    wait_view(&mut d.rx, "fresh again", |v| !v.stale && v.leader.is_some()).await;
    // Curator may re-elect after its reconnect; stop whoever leads now.
    let now = leader_id(&d.rx.borrow()).map(str::to_string);
    if now.as_deref() == Some("livy-1") {
        a.terminate();
        wait_view(&mut d.rx, "livy-2 after the restart", |v| {
            leader_id(v) == Some("livy-2")
        })
        .await;
    } else {
        drop(_b);
        wait_view(&mut d.rx, "livy-1 after the restart", |v| {
            leader_id(v) == Some("livy-1")
        })
        .await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_expiry_gets_a_new_session_and_rearms_watches() {
    let zk = ZooKeeper::start();
    let mut a = join(&zk.connect_string(), "livy-1");
    assert!(a.wait_leader(DEADLINE));
    let _b = join(&zk.connect_string(), "livy-2");
    let mut d = start(config(
        Some(zk.connect_string()),
        nodes(&["livy-1", "livy-2"]),
    ));
    wait_view(&mut d.rx, "livy-1", |v| leader_id(v) == Some("livy-1")).await;
    let seen = Recorder::start(&d.rx);
    // Frozen longer than every session timeout (4 s): all sessions expire.
    let frozen = Instant::now();
    zk.pause();
    let v = wait_view(&mut d.rx, "stale while ZooKeeper is frozen", |v| v.stale).await;
    assert_eq!(leader_id(&v), Some("livy-1"), "the last leader is kept");
    // The freeze itself (fault injection, not an assertion).
    tokio::time::sleep(Duration::from_secs(12).saturating_sub(frozen.elapsed())).await;
    zk.resume();
    // Whatever Curator re-elects, the view must follow the latch again.
    wait_view(&mut d.rx, "a fresh leader after expiry", |v| {
        !v.stale && v.leader.is_some()
    })
    .await;
    assert!(
        seen.views().iter().any(|v| v
            .problem
            .as_deref()
            .is_some_and(|p| p.contains("session ended"))),
        "the session was replaced: {:?}",
        seen.views()
    );
    let now = leader_id(&d.rx.borrow())
        .map(str::to_string)
        .unwrap_or_default();
    let next = if now == "livy-1" { "livy-2" } else { "livy-1" };
    if now == "livy-1" {
        a.terminate();
    } else {
        drop(_b);
    }
    wait_view(&mut d.rx, "the change after expiry", |v| {
        leader_id(v) == Some(next)
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ensemble_member_down_keeps_working() {
    let mut ensemble = Ensemble::start(3);
    let connect = ensemble.connect_string();
    let ports: Vec<String> = connect
        .split(',')
        .map(|hp| hp.rsplit_once(':').unwrap().1.to_string())
        .collect();
    let ids = ["livy-1", "livy-2", "livy-3", "livy-4"];
    let mut members: Vec<LatchMember> = ids.iter().map(|id| join(&connect, id)).collect();
    let mut d = start(config(Some(connect.clone()), nodes(&ids)));
    wait_view(&mut d.rx, "a leader", |v| v.leader.is_some() && !v.stale).await;
    // Stop each member in turn, so whichever one discovery is connected to
    // goes away at some point; each time, the leader changes while the
    // member is down and must be seen.
    for (i, port) in ports.iter().enumerate() {
        ensemble.stop_member(i);
        let old = leader_id(&d.rx.borrow()).unwrap().to_string();
        let k = ids.iter().position(|id| *id == old).unwrap();
        members[k].terminate();
        let v = wait_view(&mut d.rx, "the next leader with one member down", |v| {
            !v.stale && leader_id(v).is_some_and(|id| id != old)
        })
        .await;
        let now = leader_id(&v).unwrap();
        let j = ids.iter().position(|id| *id == now).unwrap();
        assert!(
            common::wait_until(DEADLINE, || members[j].is_leader()),
            "{now} holds the latch"
        );
        ensemble.start_member(i);
        assert!(
            common::wait_until(Duration::from_secs(90), || common::serving(
                port.parse().unwrap_or(0)
            )),
            "member {i} rejoined"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unmapped_participant_id_is_no_leader_with_a_reason() {
    let zk = ZooKeeper::start();
    let mut stranger = join(&zk.connect_string(), "stranger");
    assert!(stranger.wait_leader(DEADLINE));
    // A URL id naming a configured node resolves to that node.
    let _url = join(&zk.connect_string(), "http://127.0.0.12:8998");
    let mut d = start(config(
        Some(zk.connect_string()),
        nodes(&["livy-1", "livy-2"]),
    ));
    let v = wait_view(&mut d.rx, "the unmapped id reported", |v| {
        v.problem.as_deref().is_some_and(|p| p.contains("stranger"))
    })
    .await;
    assert!(v.leader.is_none(), "never a guess");
    assert_eq!(v.source, Source::ZooKeeper);
    stranger.terminate();
    let v = wait_view(&mut d.rx, "the URL id mapped to livy-2", |v| {
        leader_id(v) == Some("livy-2")
    })
    .await;
    assert!(v.problem.is_none(), "{v:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zookeeper_down_at_start_probes_the_static_list_until_it_answers() {
    // The sims elect in a ZooKeeper the proxy cannot reach.
    let other_zk = ZooKeeper::start();
    let cluster = SimCluster::start(&other_zk, 2);
    let leader = cluster.wait_for_leader(DEADLINE);
    let static_nodes: Vec<LivyNode> = (0..2)
        .map(|i| LivyNode::parse(&cluster.node_arg(i), AddressDefaults::default()).unwrap())
        .collect();
    // The proxy's own ZooKeeper: down when discovery starts.
    let mut zk = ZooKeeper::start();
    zk.stop();
    let mut d = start(config(Some(zk.connect_string()), Arc::new(static_nodes)));
    let probed = format!("livy-{}", leader + 1);
    let v = wait_view(&mut d.rx, "the active sim found by probing", |v| {
        leader_id(v) == Some(probed.as_str())
    })
    .await;
    assert_eq!(v.source, Source::Probe);

    // ZooKeeper comes up and names the other node: it is the truth now,
    // even though probing would still say otherwise.
    zk.start_again();
    let other = format!("livy-{}", 2 - leader);
    let mut first = join(&zk.connect_string(), &other);
    assert!(first.wait_leader(DEADLINE));
    let v = wait_view(&mut d.rx, "ZooKeeper's leader once it answers", |v| {
        v.source == Source::ZooKeeper && leader_id(v) == Some(other.as_str())
    })
    .await;
    assert!(!v.stale);
    // Probing has stopped: from here on every view comes from ZooKeeper,
    // through a leader change and several probe intervals.
    let seen = Recorder::start(&d.rx);
    let _second = join(&zk.connect_string(), &probed);
    first.terminate();
    wait_view(&mut d.rx, "the latch's next leader", |v| {
        v.source == Source::ZooKeeper && leader_id(v) == Some(probed.as_str())
    })
    .await;
    let views = seen.views();
    assert!(
        views.iter().all(|v| v.source == Source::ZooKeeper),
        "no probe result after ZooKeeper answered: {views:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn static_list_probing_follows_the_active_node() {
    let zk = ZooKeeper::start();
    let mut cluster = SimCluster::start(&zk, 3);
    let leader = cluster.wait_for_leader(DEADLINE);
    let static_nodes: Vec<LivyNode> = (0..3)
        .map(|i| LivyNode::parse(&cluster.node_arg(i), AddressDefaults::default()).unwrap())
        .collect();
    let mut d = start(config(None, Arc::new(static_nodes)));
    let first = format!("livy-{}", leader + 1);
    let v = wait_view(&mut d.rx, "the active node", |v| {
        leader_id(v) == Some(first.as_str())
    })
    .await;
    assert_eq!(v.source, Source::Probe);
    // Without /ha-status on the sims, it is asked once per node and then
    // remembered as missing: later rounds only GET the probe path.
    let passive = (leader + 1) % 3;
    assert!(
        common::wait_until(DEADLINE, || paths(&cluster, passive)
            .iter()
            .filter(|p| *p == "/version")
            .count()
            >= 5),
        "rounds keep probing"
    );
    let asked = paths(&cluster, passive);
    assert_eq!(
        asked.iter().filter(|p| *p == "/ha-status").count(),
        1,
        "{asked:?}"
    );
    cluster.terminate(leader);
    let next = cluster.wait_for_leader(DEADLINE);
    let second = format!("livy-{}", next + 1);
    wait_view(&mut d.rx, "the new active node", |v| {
        leader_id(v) == Some(second.as_str())
    })
    .await;
}

/// The paths a sim was asked, in order.
fn paths(cluster: &SimCluster, i: usize) -> Vec<String> {
    cluster
        .requests(i)
        .iter()
        .filter_map(|r| r["path"].as_str().map(str::to_string))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn static_list_probing_uses_ha_status_where_it_exists() {
    let zk = ZooKeeper::start();
    let mut plan = SimCluster::plan(2);
    plan.extra.push("--ha-status".to_string());
    let cluster = plan.start(&zk);
    let leader = cluster.wait_for_leader(DEADLINE);
    let static_nodes: Vec<LivyNode> = (0..2)
        .map(|i| LivyNode::parse(&cluster.node_arg(i), AddressDefaults::default()).unwrap())
        .collect();
    let mut d = start(config(None, Arc::new(static_nodes)));
    let expected = format!("livy-{}", leader + 1);
    wait_view(&mut d.rx, "the leader by /ha-status", |v| {
        leader_id(v) == Some(expected.as_str())
    })
    .await;
    let follower = 1 - leader;
    assert!(
        common::wait_until(DEADLINE, || paths(&cluster, follower).len() >= 3),
        "rounds keep probing"
    );
    for i in [leader, follower] {
        let asked = paths(&cluster, i);
        assert!(
            asked.iter().all(|p| p == "/ha-status"),
            "/ha-status alone decides: {asked:?}"
        );
    }
}
