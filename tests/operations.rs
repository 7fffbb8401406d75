//! Operating the proxy: the admin listener (readiness, status, metrics),
//! the access log, the drain on SIGTERM, SIGHUP reloads and the in-flight
//! limit, against the binary, real ZooKeeper and the Curator latch (or
//! livy-sim servers with fixed roles where discovery does not matter).

mod common;

use std::time::Duration;

use common::{Proxy, SimCluster, ZooKeeper, http_request, metric, wait_until};

const DEADLINE: Duration = Duration::from_secs(60);

async fn get(url: &str) -> (u16, String) {
    let (status, _, body) = http_request("GET", url, &[], vec![]).await;
    (status.as_u16(), body)
}

async fn json(url: &str) -> serde_json::Value {
    let (_, body) = get(url).await;
    serde_json::from_str(&body).unwrap_or_default()
}

async fn until_async<F, Fut>(mut check: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let start = std::time::Instant::now();
    while start.elapsed() < DEADLINE {
        if check().await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    false
}

#[tokio::test(flavor = "multi_thread")]
async fn readiness_status_metrics_and_access_log_follow_the_leader_through_a_failover() {
    let zk = ZooKeeper::start();
    let plan = SimCluster::plan(2);
    let nodes: Vec<String> = (0..2).map(|i| plan.node_arg(i)).collect();
    let proxy = Proxy::start(&[
        "--zookeeper",
        &zk.connect_string(),
        "--node",
        &nodes[0],
        "--node",
        &nodes[1],
    ]);
    let admin = proxy.admin_url();
    // Nobody holds the latch yet: alive, not ready, with a reason.
    assert_eq!(get(&format!("{admin}/healthz")).await.0, 200);
    let (status, body) = get(&format!("{admin}/readyz")).await;
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("reason"), "{body}");
    assert!(json(&format!("{admin}/status")).await["leader"].is_null());

    let mut cluster = plan.start(&zk);
    let leader = cluster.wait_for_leader(DEADLINE);
    let leader_id = format!("livy-{}", leader + 1);
    assert!(
        until_async(|| async { get(&format!("{admin}/readyz")).await.0 == 200 }).await,
        "ready once a leader is known"
    );
    // Both participants, once the latch's second child has been read.
    assert!(
        until_async(|| async {
            json(&format!("{admin}/status")).await["participants"]
                .as_array()
                .map(Vec::len)
                == Some(2)
        })
        .await,
        "/status lists both participants"
    );
    let status = json(&format!("{admin}/status")).await;
    assert_eq!(status["leader"]["id"], leader_id.as_str(), "{status}");
    assert_eq!(status["source"], "zookeeper");
    assert_eq!(status["zookeeper_session"], "connected");
    assert_eq!(
        status["participants"].as_array().map(Vec::len),
        Some(2),
        "{status}"
    );

    for _ in 0..5 {
        let (_, headers, _) = http_request(
            "GET",
            &format!("{}/sessions?secret=1", proxy.url()),
            &[("x-request-id", "test-request-7")],
            vec![],
        )
        .await;
        assert_eq!(headers["x-request-id"], "test-request-7", "passed through");
    }
    let (_, headers, _) =
        http_request("GET", &format!("{}/sessions", proxy.url()), &[], vec![]).await;
    assert!(
        headers.contains_key("x-request-id"),
        "one is made when absent"
    );
    let (_, text) = get(&format!("{admin}/metrics")).await;
    let gets = metric(
        &text,
        r#"livy_proxy_http_requests_total{service="default",method="GET",status_class="2xx"}"#,
    );
    assert_eq!(gets, Some(6.0), "{text}");
    assert_eq!(
        metric(&text, r#"livy_proxy_leader_known{service="default"}"#),
        Some(1.0)
    );
    assert_eq!(
        metric(
            &text,
            r#"livy_proxy_zookeeper_connected{service="default"}"#
        ),
        Some(1.0)
    );
    let info = format!(r#"livy_proxy_leader_info{{service="default",id="{leader_id}""#);
    assert!(text.contains(&info), "{text}");

    let logs = proxy.logs();
    let line = logs
        .lines()
        .find(|l| l.contains("test-request-7"))
        .unwrap_or_else(|| panic!("an access-log line for the request: {logs}"));
    for field in [
        "access",
        "method=GET",
        "path=/sessions",
        "status=200",
        "upstream=livy-",
    ] {
        assert!(line.contains(field), "{field} in {line}");
    }
    assert!(!line.contains("secret"), "the query is not logged: {line}");

    // Failover: status and metrics name the new leader.
    cluster.terminate(leader);
    let next_id = format!("livy-{}", 2 - leader);
    assert!(
        until_async(|| async {
            json(&format!("{admin}/status")).await["leader"]["id"] == next_id.as_str()
        })
        .await,
        "/status names the new leader"
    );
    let status = json(&format!("{admin}/status")).await;
    let changes = status["leader_changes"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    assert!(changes.len() >= 2, "{status}");
    let (_, text) = get(&format!("{admin}/metrics")).await;
    assert!(
        metric(
            &text,
            r#"livy_proxy_leader_changes_total{service="default"}"#
        ) >= Some(2.0),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn drain_readiness_first_then_stop_accepting_held_requests_finish_exit_0() {
    // Static mode, the node not started yet: no leader, requests are held.
    let plan = SimCluster::plan(1);
    let node = plan.node_arg(0);
    let mut proxy = Proxy::start(&[
        "--node",
        &node,
        "--probe-interval",
        "200ms",
        "--hold-timeout",
        "60s",
        "--shutdown-delay",
        "2s",
        "--shutdown-grace-period",
        "50s",
    ]);
    let admin = proxy.admin_url();
    // No Livy yet: this request is held.
    let url = proxy.url();
    let held = tokio::spawn(async move { get(&format!("{url}/version")).await });
    tokio::time::sleep(Duration::from_millis(300)).await;
    proxy.signal(libc::SIGTERM);
    // Not ready already (no leader); from the signal on, because draining.
    assert!(
        until_async(|| async {
            let (status, body) = get(&format!("{admin}/readyz")).await;
            status == 503 && body.contains("draining")
        })
        .await,
        "readiness 503 (draining) at once"
    );
    assert_eq!(
        get(&format!("{admin}/healthz")).await.0,
        200,
        "alive while draining"
    );
    // During shutdown-delay new connections are still accepted (and held).
    let url = proxy.url();
    let during_delay = tokio::spawn(async move { get(&format!("{url}/version")).await });
    tokio::time::sleep(Duration::from_millis(300)).await;
    // After it, the listener is closed.
    let addr = proxy.addr();
    assert!(
        wait_until(Duration::from_secs(20), || {
            std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_err()
        }),
        "accepting stopped after shutdown-delay"
    );
    // A leader appears: the held requests are served, discovery still runs.
    let _cluster = plan.start_static(0);
    let (status, body) = held.await.unwrap();
    assert_eq!(status, 200, "held request served during the drain: {body}");
    assert_eq!(during_delay.await.unwrap().0, 200);
    assert_eq!(proxy.wait_exit(DEADLINE), Some(0), "a clean drain exits 0");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_drain_that_must_cut_a_request_exits_non_zero() {
    let plan = SimCluster::plan(1);
    let node = plan.node_arg(0);
    let _cluster = plan.start_static(0);
    let mut proxy = Proxy::start(&["--node", &node, "--shutdown-grace-period", "1s"]);
    let url = proxy.url();
    assert_eq!(get(&format!("{url}/version")).await.0, 200);
    let slow = tokio::spawn(async move {
        http_request("GET", &format!("{url}/slow?ms=20000"), &[], vec![]).await
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    proxy.signal(libc::SIGTERM);
    assert_eq!(
        proxy.wait_exit(DEADLINE),
        Some(1),
        "cut by the grace period"
    );
    slow.abort();
}

#[tokio::test(flavor = "multi_thread")]
async fn the_in_flight_limit_sheds_with_503_overloaded() {
    let plan = SimCluster::plan(1);
    let node = plan.node_arg(0);
    let _cluster = plan.start_static(0);
    let proxy = Proxy::start(&["--node", &node, "--max-requests-in-flight", "1"]);
    let url = proxy.url();
    assert_eq!(get(&format!("{url}/version")).await.0, 200);
    let u = url.clone();
    let slow = tokio::spawn(async move { get(&format!("{u}/slow?ms=3000")).await });
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (status, headers, body) = http_request("GET", &format!("{url}/version"), &[], vec![]).await;
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("overloaded"), "{body}");
    assert!(headers.contains_key("retry-after"));
    assert_eq!(slow.await.unwrap().0, 200, "the request inside is served");
    let (_, text) = get(&format!("{}/metrics", proxy.admin_url())).await;
    assert_eq!(
        metric(
            &text,
            r#"livy_proxy_requests_shed_total{service="default"}"#
        ),
        Some(1.0),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn the_limits_and_retry_after_are_live_on_reload() {
    let plan = SimCluster::plan(1);
    let node = plan.node_arg(0);
    let _cluster = plan.start_static(0);
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("livy-proxy.toml");
    let write =
        |extra: &str| std::fs::write(&file, format!("node = [\"{node}\"]\n{extra}")).unwrap();
    write("max-requests-in-flight = 1\nretry-after = \"7s\"\n");
    let proxy = Proxy::start(&["--config", file.to_str().unwrap()]);
    let (url, admin) = (proxy.url(), proxy.admin_url());
    assert_eq!(get(&format!("{url}/version")).await.0, 200);
    let reloads = |n: f64| {
        let admin = admin.clone();
        async move {
            let (_, text) = get(&format!("{admin}/metrics")).await;
            metric(
                &text,
                r#"livy_proxy_config_reloads_total{service="default",result="success"}"#,
            ) == Some(n)
        }
    };
    // While one slow request is inside, the next is shed with the
    // Retry-After of the configuration in force.
    let shed_while_busy = || {
        let url = url.clone();
        async move {
            let u = url.clone();
            let slow = tokio::spawn(async move { get(&format!("{u}/slow?ms=2000")).await });
            tokio::time::sleep(Duration::from_millis(500)).await;
            let (status, headers, _) =
                http_request("GET", &format!("{url}/version"), &[], vec![]).await;
            assert_eq!(slow.await.unwrap().0, 200);
            let retry_after = headers
                .get("retry-after")
                .and_then(|v| v.to_str().ok())
                .map(str::to_string);
            (status.as_u16(), retry_after)
        }
    };
    assert_eq!(shed_while_busy().await, (503, Some("7".to_string())));

    write("max-requests-in-flight = 1\nretry-after = \"3s\"\n");
    proxy.signal(libc::SIGHUP);
    assert!(until_async(|| reloads(1.0)).await, "reloaded");
    assert_eq!(shed_while_busy().await, (503, Some("3".to_string())));

    write("max-requests-in-flight = 8\nmax-client-connections = 50\n");
    proxy.signal(libc::SIGHUP);
    assert!(until_async(|| reloads(2.0)).await, "reloaded");
    assert_eq!(
        shed_while_busy().await.0,
        200,
        "the raised limit lets it in"
    );
    assert!(
        !proxy.logs().contains("only change on a restart"),
        "no key here is restart-only: {}",
        proxy.logs()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn sighup_applies_live_keys_names_restart_only_ones_and_keeps_a_jdbc_stream() {
    use std::io::{Read, Write};
    let plan = SimCluster::plan(1);
    let node = plan.node_arg(0);
    let thrift_port = plan.thrift_port();
    let _cluster = plan.start_static(0);
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("livy-proxy.toml");
    let jdbc_port = common::free_port();
    let write = |extra: &str| {
        std::fs::write(
            &file,
            format!(
                "node = [\"{node}\"]\nthrift-listen = \"127.0.0.1:{jdbc_port}\"\nthrift-port = {thrift_port}\n{extra}"
            ),
        )
        .unwrap()
    };
    write("access-log = true\n");
    let proxy = Proxy::start(&["--config", file.to_str().unwrap()]);
    let admin = proxy.admin_url();
    let url = proxy.url();
    assert_eq!(get(&format!("{url}/version")).await.0, 200);

    // A JDBC stream to the (echoing) Thrift port.
    let mut jdbc = std::net::TcpStream::connect(("127.0.0.1", jdbc_port)).unwrap();
    jdbc.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let echo = |s: &mut std::net::TcpStream, msg: &[u8]| {
        s.write_all(msg).unwrap();
        let mut got = vec![0u8; msg.len()];
        s.read_exact(&mut got).unwrap();
        got
    };
    assert_eq!(echo(&mut jdbc, b"ping-1"), b"ping-1");

    // A good file: access log off (live), thrift-port changed (restart-only).
    write("access-log = false\nmax-tcp-connections = 7\n");
    proxy.signal(libc::SIGHUP);
    let reloaded = |result: &'static str| {
        let admin = admin.clone();
        async move {
            let (_, text) = get(&format!("{admin}/metrics")).await;
            metric(
                &text,
                &format!(
                    r#"livy_proxy_config_reloads_total{{service="default",result="{result}"}}"#
                ),
            ) == Some(1.0)
        }
    };
    assert!(until_async(|| reloaded("success")).await, "counted");
    let logs = proxy.logs();
    assert!(
        logs.lines()
            .any(|l| l.contains("only change on a restart") && l.contains("max-tcp-connections")),
        "{logs}"
    );
    let before = proxy.logs().matches("request_id=").count();
    assert_eq!(get(&format!("{url}/version")).await.0, 200);
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(
        proxy.logs().matches("request_id=").count(),
        before,
        "access log now off"
    );

    // A bad file: kept the old configuration, named the key.
    write("hold-timeout = \"soon\"\n");
    proxy.signal(libc::SIGHUP);
    assert!(until_async(|| reloaded("failure")).await, "counted");
    assert!(proxy.logs().contains("hold-timeout"), "the key is named");
    assert_eq!(get(&format!("{url}/version")).await.0, 200);

    assert_eq!(
        echo(&mut jdbc, b"ping-2"),
        b"ping-2",
        "the JDBC stream survived both reloads"
    );
}

/// The families a `/metrics` text declares (`# TYPE name type`), with the
/// label names their samples carry.
fn families(text: &str) -> std::collections::BTreeMap<String, (String, Vec<String>)> {
    let mut out = std::collections::BTreeMap::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let mut parts = rest.split_whitespace();
            if let (Some(name), Some(kind)) = (parts.next(), parts.next()) {
                out.insert(name.to_string(), (kind.to_string(), Vec::new()));
            }
        }
    }
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let Some((series, _)) = line.split_once('{') else {
            continue;
        };
        let family = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|s| series.strip_suffix(s).filter(|f| out.contains_key(*f)))
            .unwrap_or(series);
        let labels = line
            .split_once('{')
            .and_then(|(_, r)| r.split_once('}'))
            .map(|(l, _)| l)
            .unwrap_or("");
        if let Some((_, names)) = out.get_mut(family) {
            for pair in labels.split(',').filter(|p| !p.is_empty()) {
                if let Some((k, _)) = pair.split_once('=')
                    && k != "le"
                    && !names.iter().any(|n| n == k)
                {
                    names.push(k.to_string());
                }
            }
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread")]
async fn the_metrics_alerts_and_dashboards_use_are_the_ones_the_proxy_serves() {
    // With ZooKeeper: its gauge is only served then.
    let zk = ZooKeeper::start();
    let plan = SimCluster::plan(1);
    let node = plan.node_arg(0);
    let cluster = plan.start(&zk);
    cluster.wait_for_leader(DEADLINE);
    // And with TLS on a listener (the JDBC one): the tls_ metrics are only
    // served for listeners that speak it.
    let tls = tempfile::tempdir().unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = rcgen::CertificateParams::new(vec!["localhost".to_string()])
        .unwrap()
        .self_signed(&key)
        .unwrap();
    let (cert_file, key_file) = (tls.path().join("tls.crt"), tls.path().join("tls.key"));
    std::fs::write(&cert_file, cert.pem()).unwrap();
    std::fs::write(&key_file, key.serialize_pem()).unwrap();
    let jdbc = format!("127.0.0.1:{}", common::free_port());
    let proxy = Proxy::start(&[
        "--zookeeper",
        &zk.connect_string(),
        "--node",
        &node,
        "--thrift-listen",
        &jdbc,
        "--thrift-tls-cert",
        &cert_file.display().to_string(),
        "--thrift-tls-key",
        &key_file.display().to_string(),
    ]);
    let admin = proxy.admin_url();
    assert!(
        until_async(|| async { get(&format!("{admin}/readyz")).await.0 == 200 }).await,
        "ready"
    );
    assert_eq!(get(&format!("{}/version", proxy.url())).await.0, 200);
    let (_, text) = get(&format!("{}/metrics", proxy.admin_url())).await;
    let served = families(&text);
    let contract = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/prometheus/metrics.txt"),
    )
    .unwrap();
    let mut listed = 0;
    for line in contract
        .lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
    {
        let mut parts = line.split_whitespace();
        let (name, kind, labels) = (
            parts.next().unwrap(),
            parts.next().unwrap(),
            parts.next().unwrap_or(""),
        );
        listed += 1;
        let (served_kind, served_labels) = served.get(name).unwrap_or_else(|| {
            panic!("{name} (deploy/prometheus/metrics.txt) is not served:\n{text}")
        });
        assert_eq!(served_kind, kind, "{name}");
        if !served_labels.is_empty() {
            for label in labels.split(',').filter(|l| !l.is_empty()) {
                assert!(
                    served_labels.iter().any(|l| l == label),
                    "{name} lacks label {label}: {served_labels:?}"
                );
            }
        }
    }
    // And nothing is served that the contract does not list.
    for name in served.keys() {
        assert!(
            contract
                .lines()
                .any(|l| l.split_whitespace().next() == Some(name.as_str())),
            "{name} is served but not in deploy/prometheus/metrics.txt"
        );
    }
    assert!(listed >= 20);
}

#[tokio::test(flavor = "multi_thread")]
async fn the_health_subcommand_answers_for_a_container_healthcheck() {
    let plan = SimCluster::plan(1);
    let node = plan.node_arg(0);
    let proxy = Proxy::start(&["--node", &node]);
    let health = |url: String| {
        std::process::Command::new(env!("CARGO_BIN_EXE_livy-proxy"))
            .args(["health", &url])
            .status()
            .expect("runs")
            .code()
    };
    assert_eq!(health(format!("{}/healthz", proxy.admin_url())), Some(0));
    // Not ready (the node is not running): /readyz is not 200.
    assert_eq!(health(format!("{}/readyz", proxy.admin_url())), Some(1));
    let closed = format!("http://127.0.0.1:{}/healthz", common::free_port());
    assert_eq!(health(closed), Some(1));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_jdbc_connection_gets_an_access_line_and_its_metrics() {
    use std::io::{Read, Write};
    let plan = SimCluster::plan(1);
    let node = plan.node_arg(0);
    let thrift_port = plan.thrift_port().to_string();
    let _cluster = plan.start_static(0);
    let jdbc_port = common::free_port();
    let listen = format!("127.0.0.1:{jdbc_port}");
    let proxy = Proxy::start(&[
        "--node",
        &node,
        "--thrift-listen",
        &listen,
        "--thrift-port",
        &thrift_port,
    ]);
    {
        let mut jdbc = std::net::TcpStream::connect(&listen).unwrap();
        jdbc.set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        jdbc.write_all(b"hello").unwrap();
        let mut got = [0u8; 5];
        jdbc.read_exact(&mut got).unwrap();
        assert_eq!(&got, b"hello");
    }
    assert!(
        wait_until(DEADLINE, || proxy
            .logs()
            .lines()
            .any(|l| l.contains("access")
                && l.contains("jdbc")
                && l.contains("bytes_in=5"))),
        "an access line when the JDBC connection ends: {}",
        proxy.logs()
    );
    let (_, text) = get(&format!("{}/metrics", proxy.admin_url())).await;
    assert_eq!(
        metric(
            &text,
            r#"livy_proxy_jdbc_connections_total{service="default"}"#
        ),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        metric(
            &text,
            r#"livy_proxy_jdbc_connections_open{service="default"}"#
        ),
        Some(0.0)
    );
    assert_eq!(
        metric(
            &text,
            r#"livy_proxy_bytes_total{service="default",listener="jdbc",direction="received"}"#
        ),
        Some(5.0)
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn in_a_drain_jdbc_stops_accepting_with_http_and_its_streams_close_after_the_http_requests() {
    use std::io::{Read, Write};
    let plan = SimCluster::plan(1);
    let node = plan.node_arg(0);
    let thrift_port = plan.thrift_port().to_string();
    let _cluster = plan.start_static(0);
    let jdbc_port = common::free_port();
    let listen = format!("127.0.0.1:{jdbc_port}");
    let mut proxy = Proxy::start(&[
        "--node",
        &node,
        "--thrift-listen",
        &listen,
        "--thrift-port",
        &thrift_port,
        "--shutdown-delay",
        "1s",
        "--shutdown-grace-period",
        "30s",
    ]);
    let mut jdbc = std::net::TcpStream::connect(&listen).unwrap();
    jdbc.set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let mut echo = |msg: &[u8]| -> bool {
        let mut got = vec![0u8; msg.len()];
        jdbc.write_all(msg).is_ok() && jdbc.read_exact(&mut got).is_ok() && got == msg
    };
    assert!(echo(b"before"));
    let url = proxy.url();
    let slow = tokio::spawn(async move {
        http_request("GET", &format!("{url}/slow?ms=4000"), &[], vec![]).await
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    proxy.signal(libc::SIGTERM);
    // After shutdown-delay: no new JDBC connection, the open stream works.
    assert!(
        wait_until(Duration::from_secs(20), || std::net::TcpStream::connect(
            &listen
        )
        .is_err()),
        "the JDBC listener stopped accepting"
    );
    assert!(
        echo(b"during"),
        "the open JDBC stream works while HTTP drains"
    );
    let (status, _, _) = slow.await.unwrap();
    assert_eq!(status, 200, "the HTTP request in flight finished");
    // Then the JDBC stream is closed, and the proxy exits cleanly.
    assert_eq!(proxy.wait_exit(DEADLINE), Some(0));
    assert!(!echo(b"after"), "the JDBC stream was closed");
}

#[tokio::test(flavor = "multi_thread")]
async fn sighup_replaces_the_node_list() {
    let plan = SimCluster::plan(2);
    let (first, second) = (plan.node_arg(0), plan.node_arg(1));
    let cluster = plan.start_static(0);
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("livy-proxy.toml");
    let write = |node: &str| {
        std::fs::write(
            &file,
            format!("node = [\"{node}\"]\nprobe-interval = \"200ms\"\n"),
        )
        .unwrap()
    };
    write(&first);
    let proxy = Proxy::start(&["--config", file.to_str().unwrap()]);
    let url = format!("{}/version", proxy.url());
    assert_eq!(get(&url).await.0, 200);
    // livy-2 takes over; the proxy knows only livy-1, which now redirects
    // to a node outside its list: not followed.
    cluster.set_role(1, 1);
    cluster.set_role(0, 1);
    assert!(
        until_async(|| async { get(&url).await.0 == 307 }).await,
        "a redirect to an unknown node goes to the client"
    );
    write(&second);
    proxy.signal(libc::SIGHUP);
    assert!(
        until_async(|| async {
            let (status, headers, _) = http_request("GET", &url, &[], vec![]).await;
            status == 200 && headers.get("x-livy-node").is_some_and(|v| v == "livy-2")
        })
        .await,
        "after the reload the new list is probed and served: {}",
        proxy.logs()
    );
    assert!(
        !proxy.logs().contains("only change on a restart"),
        "node is live"
    );
}

/// In ZooKeeper mode the latch does not change when the node list does:
/// the reload itself must make discovery map the leader's id again, both
/// an id that mapped to no node and a node whose URL was wrong.
#[tokio::test(flavor = "multi_thread")]
async fn sighup_maps_the_latch_leader_again_with_the_new_node_list() {
    let zk = ZooKeeper::start();
    let plan = SimCluster::plan(2);
    let nodes: Vec<String> = (0..2).map(|i| plan.node_arg(i)).collect();
    let cluster = plan.start(&zk);
    let leader = cluster.wait_for_leader(DEADLINE);
    let (leader_id, other) = (format!("livy-{}", leader + 1), &nodes[1 - leader]);
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("livy-proxy.toml");
    let write = |list: &[&str]| {
        let list = list
            .iter()
            .map(|n| format!("\"{n}\""))
            .collect::<Vec<_>>()
            .join(", ");
        std::fs::write(
            &file,
            format!(
                "zookeeper = \"{}\"\nnode = [{list}]\nhold-timeout = \"1s\"\n",
                zk.connect_string()
            ),
        )
        .unwrap()
    };
    write(&[other]);
    let proxy = Proxy::start(&["--config", file.to_str().unwrap()]);
    let url = format!("{}/version", proxy.url());
    let answer = || async {
        let (status, headers, body) = http_request("GET", &url, &[], vec![]).await;
        (status.as_u16(), common::served_by(&headers), body)
    };
    // The latch names a participant id no node has.
    assert!(
        until_async(|| async {
            let (status, _, body) = answer().await;
            status == 503
                && body.contains("no_leader")
                && body.contains("maps to no known Livy node")
        })
        .await,
        "an unmapped leader id is no leader: {}",
        proxy.logs()
    );
    // Mapped now, but to an address where nothing listens.
    let wrong = format!("{leader_id}=http://127.0.0.1:{}", common::free_port());
    write(&[other, &wrong]);
    proxy.signal(libc::SIGHUP);
    assert!(
        until_async(|| async {
            let (status, _, body) = answer().await;
            status == 503 && body.contains("leader_unreachable")
        })
        .await,
        "after the reload the latch leader is mapped to the listed (wrong) address: {}",
        proxy.logs()
    );
    // The address corrected: traffic moves to it.
    write(&nodes.iter().map(String::as_str).collect::<Vec<_>>());
    proxy.signal(libc::SIGHUP);
    assert!(
        until_async(|| async {
            let (status, node, _) = answer().await;
            status == 200 && node == leader_id
        })
        .await,
        "after the reload the corrected address is served: {}",
        proxy.logs()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn in_process_a_cut_drain_ends_the_requests_it_cut() {
    use livy_proxy::app::{self, Control, Ended, Listeners};
    use livy_proxy::config::Config;
    let plan = SimCluster::plan(1);
    let node = plan.node_arg(0);
    let _cluster = plan.start_static(0);
    let port = common::free_port();
    let config = Config::from_args([
        "livy-proxy",
        "--node",
        &node,
        "--listen",
        &format!("127.0.0.1:{port}"),
        "--admin-listen",
        "off",
        "--shutdown-grace-period",
        "500ms",
    ])
    .unwrap();
    let listeners = Listeners::bind(&config).unwrap();
    let control = Control::default();
    let running = tokio::spawn(app::run(config, listeners, control.clone(), None));
    let url = format!("http://127.0.0.1:{port}");
    assert!(until_async(|| async { get(&format!("{url}/version")).await.0 == 200 }).await);
    let slow = tokio::spawn(async move {
        let client =
            hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
                .build_http::<http_body_util::Empty<bytes::Bytes>>();
        client
            .get(format!("{url}/slow?ms=30000").parse().unwrap())
            .await
            .map(|r| r.status())
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    control.drain.cancel();
    assert_eq!(running.await.unwrap(), Ended::Cut);
    // The cut request's connection is gone with the proxy's tasks: the
    // client learns at once, not when Livy would have answered.
    let answer = tokio::time::timeout(Duration::from_secs(10), slow)
        .await
        .expect("the cut request ended within 10 s")
        .unwrap();
    assert!(answer.is_err(), "cut, not answered: {answer:?}");
}

/// The backlog of a listening socket, as `ss -lt` shows it (its Send-Q).
fn listen_backlog(port: u16) -> u32 {
    let out = std::process::Command::new("ss")
        .args(["-ltnH", &format!("sport = :{port}")])
        .output()
        .expect("ss runs (iproute2; ./scripts/test installs it)");
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    // "LISTEN 0 4096 127.0.0.1:PORT 0.0.0.0:*"
    text.split_whitespace()
        .nth(2)
        .and_then(|b| b.parse().ok())
        .unwrap_or_else(|| panic!("no listener on port {port}: {text:?}"))
}

/// Every listener keeps room in the kernel for a burst of clients (all of
/// them reconnecting after a failover, or waiting while accepting pauses
/// at a limit): std's 128 would drop handshakes beyond it.
#[test]
fn every_listener_has_room_for_a_reconnect_burst() {
    let sim = SimCluster::plan(1).start_static(0);
    let jdbc = common::free_port();
    let proxy = Proxy::start(&[
        "--node",
        &sim.node_arg(0),
        "--thrift-listen",
        &format!("127.0.0.1:{jdbc}"),
    ]);
    let somaxconn: u32 = std::fs::read_to_string("/proc/sys/net/core/somaxconn")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(4096);
    let expected = livy_proxy::listener::LISTEN_BACKLOG.min(somaxconn);
    let admin: std::net::SocketAddr = proxy
        .admin_url()
        .trim_start_matches("http://")
        .parse()
        .unwrap();
    for (what, port) in [
        ("HTTP", proxy.addr().port()),
        ("JDBC", jdbc),
        ("admin", admin.port()),
    ] {
        assert_eq!(listen_backlog(port), expected, "the {what} listener");
    }
}
