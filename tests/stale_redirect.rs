//! A passive server's redirect corrects the proxy's view at once.
//!
//! The proxy binary with the static node list, probing only every 60 s so
//! that its view is stale for the whole test unless a redirect corrects it,
//! in front of livy-sim servers whose roles the test sets by hand (a
//! step-down leaves the old leader running and redirecting, as Livy does);
//! and once with ZooKeeper and the real Curator latch, where a redirect
//! must never override the latch. Real clients: curl and Python requests.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::{Proxy, SimCluster, ZooKeeper, http_request};

/// 2 MiB of statement code: more than `max-replay-body` (1 MiB).
fn big_body() -> Vec<u8> {
    let mut out = Vec::with_capacity(2 << 20);
    let mut i = 0u64;
    while out.len() < 2 << 20 {
        out.extend_from_slice(format!("val x{i} = spark.range({i}).count()\n").as_bytes());
        i += 1;
    }
    out
}

fn static_cluster(extra: &[&str]) -> (SimCluster, Proxy) {
    let mut plan = SimCluster::plan(3);
    plan.extra = extra.iter().map(|s| s.to_string()).collect();
    let nodes: Vec<String> = (0..3).map(|i| plan.node_arg(i)).collect();
    let cluster = plan.start_static(0);
    let mut args = vec!["--probe-interval".to_string(), "60s".to_string()];
    for n in nodes {
        args.push("--node".to_string());
        args.push(n);
    }
    let proxy = Proxy::start(&args);
    (cluster, proxy)
}

/// Which node answered a GET through the proxy.
async fn answered_by(proxy: &Proxy, path: &str) -> String {
    let (status, headers, body) =
        http_request("GET", &format!("{}{path}", proxy.url()), &[], vec![]).await;
    assert!(status.is_success(), "GET {path}: {status} {body}");
    headers["x-livy-node"].to_str().unwrap_or("").to_string()
}

/// Makes node `to` the leader: it leads, every other node redirects to it.
fn step_down_to(cluster: &SimCluster, to: usize) {
    cluster.set_role(to, to);
    for i in (0..3).filter(|i| *i != to) {
        cluster.set_role(i, to);
    }
}

/// Requests node `i` got on `path`, probes left out.
fn hits(cluster: &SimCluster, i: usize, path: &str) -> usize {
    cluster
        .requests(i)
        .iter()
        .filter(|r| r["path"] == path)
        .count()
}

struct Answer {
    status: u16,
    redirects: u64,
    node: String,
    body_intact: bool,
}

fn curl_post(url: &str, body: &[u8], dir: &Path) -> Answer {
    let input = dir.join("in");
    let output = dir.join("out");
    let head = dir.join("head");
    std::fs::write(&input, body).unwrap();
    let out = Command::new("curl")
        .args(["-sS", "-L", "-u", "alice:secret", "--max-redirs", "10"])
        .args(["-H", "Content-Type: application/x-thrift"])
        .arg("--data-binary")
        .arg(format!("@{}", input.display()))
        .arg("-o")
        .arg(&output)
        .arg("-D")
        .arg(&head)
        .args(["-w", "%{http_code} %{num_redirects}", url])
        .output()
        .expect("curl runs");
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success(),
        "curl failed: {text} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (status, redirects) = text.split_once(' ').expect("curl -w output");
    let heads = std::fs::read_to_string(&head).unwrap_or_default();
    let node = heads
        .lines()
        .rev()
        .find_map(|l| l.strip_prefix("x-livy-node: "))
        .unwrap_or("")
        .trim()
        .to_string();
    Answer {
        status: status.parse().unwrap_or(0),
        redirects: redirects.trim().parse().unwrap_or(u64::MAX),
        node,
        body_intact: std::fs::read(&output).unwrap_or_default() == body,
    }
}

const REQUESTS_POST: &str = r#"
import json, sys, requests
url, path = sys.argv[1], sys.argv[2]
data = open(path, "rb").read()
r = requests.post(url, data=data, auth=("alice", "secret"), timeout=120,
                  headers={"Content-Type": "application/x-thrift"})
print(json.dumps({"status": r.status_code, "redirects": len(r.history),
                  "node": r.headers.get("x-livy-node", ""), "intact": r.content == data}))
"#;

fn requests_post(url: &str, body: &[u8], dir: &Path) -> Answer {
    let py = common::python_venv("requests-venv", &["requests==2.32.3"]);
    let input = dir.join("in-requests");
    std::fs::write(&input, body).unwrap();
    let out = Command::new(py)
        .args(["-c", REQUESTS_POST, url])
        .arg(&input)
        .output()
        .expect("python runs");
    assert!(
        out.status.success(),
        "requests failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    Answer {
        status: v["status"].as_u64().unwrap_or(0) as u16,
        redirects: v["redirects"].as_u64().unwrap_or(u64::MAX),
        node: v["node"].as_str().unwrap_or("").to_string(),
        body_intact: v["intact"] == true,
    }
}

fn assert_reached(a: &Answer, node: &str, max_redirects: u64, client: &str) {
    assert_eq!(a.status, 200, "{client}: status");
    assert_eq!(a.node, node, "{client}: answered by");
    assert!(a.body_intact, "{client}: the body came back changed");
    assert!(
        a.redirects <= max_redirects,
        "{client}: {} redirects followed (at most {max_redirects})",
        a.redirects
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_large_post_through_a_stale_view_goes_straight_to_the_new_leader() {
    let (cluster, proxy) = static_cluster(&[]);
    assert_eq!(answered_by(&proxy, "/version").await, "livy-1");
    let body = big_body();
    let dir = tempfile::tempdir().unwrap();
    let url = format!("{}/cliservice", proxy.url());

    // The body waits at the proxy while the passive's 307 arrives (it asked
    // for 100-continue), then goes once to the new leader: no redirect.
    step_down_to(&cluster, 1);
    let a = curl_post(&url, &body, dir.path());
    assert_reached(&a, "livy-2", 0, "curl");
    assert_eq!(hits(&cluster, 1, "/cliservice"), 1);

    step_down_to(&cluster, 2);
    let a = requests_post(&url, &body, dir.path());
    assert_reached(&a, "livy-3", 0, "requests");
    assert_eq!(hits(&cluster, 2, "/cliservice"), 1);
    // The passives redirected without reading the body, once each.
    assert_eq!(hits(&cluster, 0, "/cliservice"), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_passive_that_reads_the_body_redirects_the_client_once_to_the_moved_view() {
    let (cluster, proxy) = static_cluster(&["--passive-reads-body"]);
    assert_eq!(answered_by(&proxy, "/version").await, "livy-1");
    let body = big_body();
    let dir = tempfile::tempdir().unwrap();
    let url = format!("{}/cliservice", proxy.url());

    step_down_to(&cluster, 1);
    let a = curl_post(&url, &body, dir.path());
    assert_reached(&a, "livy-2", 1, "curl");
    assert_eq!(
        hits(&cluster, 0, "/cliservice"),
        1,
        "the old leader got the body once, not once per redirect"
    );

    step_down_to(&cluster, 2);
    let a = requests_post(&url, &body, dir.path());
    assert_reached(&a, "livy-3", 1, "requests");
    assert_eq!(
        hits(&cluster, 1, "/cliservice"),
        2,
        "livy-2: curl's, then the one it redirected"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn after_a_step_down_small_requests_go_to_the_new_leader_from_the_second_on() {
    let (cluster, proxy) = static_cluster(&[]);
    assert_eq!(answered_by(&proxy, "/sessions").await, "livy-1");
    step_down_to(&cluster, 1);
    cluster.clear_requests(0);
    for _ in 0..10 {
        assert_eq!(answered_by(&proxy, "/sessions").await, "livy-2");
    }
    assert_eq!(
        hits(&cluster, 0, "/sessions"),
        1,
        "only the first request met the old leader's redirect"
    );
    assert_eq!(hits(&cluster, 1, "/sessions"), 10);
}

/// The new leader a moment after a failover: its latch names it but its
/// role has not flipped, so it answers every request with a 307 to the
/// same URL on itself. The proxy asks it again (every
/// `SELF_REDIRECT_PAUSE`, within `hold-timeout`) instead of passing the
/// 307 on or following it round until the hop limit.
#[tokio::test(flavor = "multi_thread")]
async fn a_leader_redirecting_to_itself_is_asked_again_until_it_has_taken_over() {
    let (cluster, proxy) = static_cluster(&[]);
    assert_eq!(answered_by(&proxy, "/sessions").await, "livy-1");
    cluster.set_taking_over(0);
    for i in 0..3 {
        cluster.clear_requests(i);
    }
    let url = format!("{}/sessions", proxy.url());
    let request = tokio::spawn(async move { http_request("GET", &url, &[], vec![]).await });
    // Long enough for several of the proxy's attempts to meet the 307.
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert!(
        !request.is_finished(),
        "the request was answered while livy-1 redirected"
    );
    cluster.set_role(0, 0);
    let (status, headers, body) = request.await.expect("request task");
    assert_eq!(status, 200, "{body}");
    assert_eq!(headers["x-livy-node"], "livy-1");
    assert!(
        hits(&cluster, 0, "/sessions") >= 3,
        "livy-1 was asked again: {} times in all",
        hits(&cluster, 0, "/sessions")
    );
    for i in 1..3 {
        assert_eq!(
            hits(&cluster, i, "/sessions"),
            0,
            "livy-{} was asked",
            i + 1
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_redirect_to_an_unknown_host_changes_nothing() {
    let (cluster, proxy) = static_cluster(&["--peer", "livy-9=127.0.0.99"]);
    assert_eq!(answered_by(&proxy, "/sessions").await, "livy-1");
    // livy-1 names a host that is not a configured Livy node.
    cluster.set_role(0, 8);
    for i in 0..3 {
        cluster.clear_requests(i);
    }
    let (status, headers, _) =
        http_request("GET", &format!("{}/sessions", proxy.url()), &[], vec![]).await;
    assert_eq!(status, 307, "passed to the client");
    let location = headers["location"].to_str().unwrap();
    assert!(
        location.starts_with("http://127.0.0.99:"),
        "untouched: {location}"
    );
    // Nothing was probed: discovery heard nothing.
    tokio::time::sleep(Duration::from_millis(500)).await;
    for i in 1..3 {
        assert!(
            cluster.requests(i).is_empty(),
            "livy-{} was asked something",
            i + 1
        );
    }
    cluster.set_role(0, 0);
    assert_eq!(answered_by(&proxy, "/sessions").await, "livy-1");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_confused_passive_naming_a_node_that_is_not_active_does_not_move_the_view_there() {
    let (cluster, proxy) = static_cluster(&[]);
    assert_eq!(answered_by(&proxy, "/sessions").await, "livy-1");
    // livy-2 is the real leader; livy-1 wrongly names livy-3, a passive.
    cluster.set_role(1, 1);
    cluster.set_role(2, 1);
    cluster.set_role(0, 2);
    for i in 0..3 {
        cluster.clear_requests(i);
    }
    for _ in 0..5 {
        assert_eq!(answered_by(&proxy, "/sessions").await, "livy-2");
    }
    assert_eq!(
        hits(&cluster, 2, "/sessions"),
        0,
        "the node the confused passive named was checked, not used"
    );
    assert_eq!(hits(&cluster, 0, "/sessions"), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn with_zookeeper_a_redirect_never_overrides_the_latch() {
    let zk = ZooKeeper::start();
    let plan = SimCluster::plan(2);
    let nodes: Vec<String> = (0..2).map(|i| plan.node_arg(i)).collect();
    let cluster = plan.start(&zk);
    let leader = cluster.wait_for_leader(Duration::from_secs(60));
    let other = 1 - leader;
    let proxy = Proxy::start(&[
        "--zookeeper",
        &zk.connect_string(),
        "--node",
        &nodes[0],
        "--node",
        &nodes[1],
    ]);
    let leader_id = format!("livy-{}", leader + 1);
    assert_eq!(answered_by(&proxy, "/sessions").await, leader_id);
    // The latch's leader claims to be passive and names the other node,
    // which (per its own latch) redirects back: ZooKeeper is re-read, still
    // names the leader, and the view stays.
    cluster.set_role(leader, other);
    let (status, _, body) =
        http_request("GET", &format!("{}/sessions", proxy.url()), &[], vec![]).await;
    assert_eq!(
        status, 503,
        "the two servers only redirect to each other: {body}"
    );
    assert!(body.contains("redirect_loop"), "{body}");
    let logs = proxy.logs();
    assert!(
        logs.contains("ZooKeeper still names the same leader"),
        "the latch was re-read: {logs}"
    );
    cluster.set_role(leader, leader);
    assert_eq!(answered_by(&proxy, "/sessions").await, leader_id);
}
