//! JDBC through the livy-proxy binary, end to end: the real ZooKeeper, the
//! real Curator LeaderLatch, and
//! - livy-sim nodes whose Thrift port (an echo) is open only while active;
//! - a real HiveServer2 client (pyhive, from PyPI) against minimal HS2
//!   servers (tests/support/hs2/), over both of Livy's Thrift transports:
//!   binary (the JDBC listener) and HTTP (`/cliservice` via the HTTP listener).

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::{
    LatchMember, Proc, Proxy, SimCluster, ZooKeeper, free_port, free_port_on_all, wait_until,
};

const DEADLINE: Duration = Duration::from_secs(60);

fn jdbc_proxy(zk: &ZooKeeper, nodes: &[String], thrift_port: u16) -> (Proxy, String) {
    let jdbc = format!("127.0.0.1:{}", free_port());
    let mut args = vec![
        "--zookeeper".to_string(),
        zk.connect_string(),
        "--thrift-listen".into(),
        jdbc.clone(),
        "--thrift-port".into(),
        thrift_port.to_string(),
        "--hold-timeout".into(),
        "30s".into(),
    ];
    for n in nodes {
        args.extend(["--node".to_string(), n.clone()]);
    }
    (Proxy::start(&args), jdbc)
}

fn thrift_connections(cluster: &SimCluster, i: usize) -> u64 {
    cluster
        .state(i)
        .and_then(|s| s["thrift_connections"].as_u64())
        .unwrap_or(0)
}

/// Connects through the proxy and echoes `msg`; None if the proxy closed.
fn echo(addr: &str, msg: &[u8]) -> Option<(TcpStream, Vec<u8>)> {
    let mut s = TcpStream::connect(addr).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(40))).ok()?;
    s.write_all(msg).ok()?;
    let mut buf = vec![0u8; msg.len()];
    s.read_exact(&mut buf).ok()?;
    Some((s, buf))
}

#[test]
fn byte_stream_reaches_the_active_thrift_port_and_failover_closes_it() {
    let zk = ZooKeeper::start();
    let mut cluster = SimCluster::start(&zk, 3);
    let leader = cluster.wait_for_leader(DEADLINE);
    let nodes: Vec<String> = (0..3).map(|i| cluster.node_arg(i)).collect();
    let (_proxy, jdbc) = jdbc_proxy(&zk, &nodes, cluster.thrift_port());

    let (mut old, got) = echo(&jdbc, b"TCLIService.OpenSession").expect("echo through the proxy");
    assert_eq!(got, b"TCLIService.OpenSession");
    for i in 0..3 {
        let expected = u64::from(i == leader);
        assert_eq!(
            thrift_connections(&cluster, i),
            expected,
            "livy-{} Thrift connections",
            i + 1
        );
    }

    cluster.terminate(leader);
    let next = cluster.wait_for_leader(DEADLINE);
    // The old connection is closed by the proxy (not left hanging).
    let mut buf = [0u8; 8];
    let n = old.read(&mut buf).unwrap_or(0);
    assert_eq!(n, 0, "old connection closed at failover");
    // New connections reach the new leader (retry: its Thrift port opens
    // right after it learns it leads).
    let ok = wait_until(DEADLINE, || {
        echo(&jdbc, b"again").is_some_and(|(_, b)| b == b"again")
    });
    assert!(ok, "new connection served");
    assert!(
        thrift_connections(&cluster, next) >= 1,
        "served by the new leader livy-{}",
        next + 1
    );
}

/// The Python environment with pyhive and thrift, made once under target/.
fn python() -> PathBuf {
    common::python_venv("hs2-venv", &["PyHive==0.7.0", "thrift==0.16.0"])
}

fn support(file: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/support/hs2")
        .join(file)
}

struct Hs2 {
    _proc: Proc,
    _latch: LatchMember,
}

fn hs2(py: &PathBuf, zk: &ZooKeeper, name: &str, ip: &str, bin: u16, http: u16) -> Hs2 {
    let mut cmd = Command::new(py);
    cmd.arg(support("hs2_server.py"))
        .args([
            "--name",
            name,
            "--binary",
            &format!("{ip}:{bin}"),
            "--http",
            &format!("{ip}:{http}"),
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let proc = Proc::spawn(name, &mut cmd);
    let up = wait_until(DEADLINE, || {
        TcpStream::connect((ip, bin)).is_ok() && TcpStream::connect((ip, http)).is_ok()
    });
    assert!(up, "{name} listens");
    let latch = LatchMember::join(&zk.connect_string(), "/livy_ha/leader", name, 4000);
    assert!(latch.wait_ready());
    Hs2 {
        _proc: proc,
        _latch: latch,
    }
}

/// Runs the pyhive client; returns the row it fetched.
fn pyhive(py: &PathBuf, transport: &str, addr: &str) -> Result<String, String> {
    let out = Command::new(py)
        .arg(support("client.py"))
        .args([transport, addr])
        .output()
        .map_err(|e| e.to_string())?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    match stdout.lines().find_map(|l| l.strip_prefix("ROW ")) {
        Some(row) if out.status.success() => Ok(row.to_string()),
        _ => Err(format!("{stdout}{}", String::from_utf8_lossy(&out.stderr))),
    }
}

#[test]
fn pyhive_through_the_proxy_binary_and_http_across_a_failover() {
    let py = python();
    let zk = ZooKeeper::start();
    let ips = ["127.0.0.51", "127.0.0.52"];
    let bin = free_port_on_all(&ips);
    let http = free_port_on_all(&ips);
    let mut first = Some(hs2(&py, &zk, "hs2-1", ips[0], bin, http));
    assert!(
        first
            .as_ref()
            .is_some_and(|h| h._latch.wait_leader(DEADLINE))
    );
    let _second = hs2(&py, &zk, "hs2-2", ips[1], bin, http);
    let nodes = vec![
        format!("hs2-1=http://{}:{http}", ips[0]),
        format!("hs2-2=http://{}:{http}", ips[1]),
    ];
    let (proxy, jdbc) = jdbc_proxy(&zk, &nodes, bin);
    let http_addr = proxy.addr().to_string();

    let row = |transport: &str, addr: &str, expected: &str| {
        let mut last = String::new();
        let ok = wait_until(DEADLINE, || match pyhive(&py, transport, addr) {
            Ok(r) if r == expected => true,
            Ok(r) => {
                last = format!("row {r}");
                false
            }
            Err(e) => {
                last = e;
                false
            }
        });
        assert!(
            ok,
            "pyhive {transport} via the proxy never got {expected}: {last}"
        );
    };
    row("--binary", &jdbc, "hs2-1");
    row("--http", &http_addr, "hs2-1");

    // Failover: hs2-1 leaves the election cleanly.
    if let Some(mut h) = first.take() {
        h._latch.terminate();
    }
    row("--binary", &jdbc, "hs2-2");
    row("--http", &http_addr, "hs2-2");
}
