//! Discovery in-process (the library's `discovery::spawn`) against the real
//! ZooKeeper and the real Curator LeaderLatch: every fault it must survive.

mod common;

use std::sync::Arc;
use std::time::Duration;

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
        nodes,
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
    // Frozen longer than every session timeout: all sessions expire on thaw.
    zk.pause();
    tokio::time::sleep(Duration::from_secs(12)).await;
    zk.resume();
    // Whatever Curator re-elects, the view must follow the latch again.
    wait_view(&mut d.rx, "a fresh leader after expiry", |v| {
        !v.stale && v.leader.is_some()
    })
    .await;
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
    let mut a = join(&connect, "livy-1");
    assert!(a.wait_leader(DEADLINE));
    let _b = join(&connect, "livy-2");
    let mut d = start(config(Some(connect.clone()), nodes(&["livy-1", "livy-2"])));
    wait_view(&mut d.rx, "livy-1", |v| leader_id(v) == Some("livy-1")).await;
    ensemble.stop_member(0);
    ensemble.stop_member(0); // idempotent
    a.terminate();
    wait_view(&mut d.rx, "livy-2 with one member down", |v| {
        leader_id(v) == Some("livy-2") && !v.stale
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unmapped_participant_id_is_no_leader_with_a_reason() {
    let zk = ZooKeeper::start();
    let _a = join(&zk.connect_string(), "stranger");
    let mut d = start(config(Some(zk.connect_string()), nodes(&["livy-1"])));
    let v = wait_view(&mut d.rx, "the unmapped id reported", |v| {
        v.problem.as_deref().is_some_and(|p| p.contains("stranger"))
    })
    .await;
    assert!(v.leader.is_none(), "never a guess");
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
    let dead_zk = format!("127.0.0.1:{}", common::free_port());
    let mut d = start(config(Some(dead_zk), Arc::new(static_nodes)));
    let expected = format!("livy-{}", leader + 1);
    let v = wait_view(&mut d.rx, "the active sim found by probing", |v| {
        leader_id(v) == Some(expected.as_str())
    })
    .await;
    assert_eq!(v.source, Source::Probe);
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
    cluster.terminate(leader);
    let next = cluster.wait_for_leader(DEADLINE);
    let second = format!("livy-{}", next + 1);
    wait_view(&mut d.rx, "the new active node", |v| {
        leader_id(v) == Some(second.as_str())
    })
    .await;
}
