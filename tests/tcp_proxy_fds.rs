//! The JDBC TCP proxy leaks no file descriptors: thousands of connections
//! through it, then every descriptor of the process counted.
//!
//! This test is alone in its test binary because it counts the whole
//! process (/proc/self/fd), so nothing else may open or close descriptors in
//! that process meanwhile. Under `cargo test` the tests of one binary run on
//! parallel threads of one process, and a lock taken inside the tests cannot
//! keep them apart: `#[tokio::test]` builds a test's runtime (an epoll, a dup
//! of it, an eventfd, a dup of the signal driver's socket: four descriptors)
//! before the body can take the lock, and drops it after the body has
//! released it. In tests/tcp_proxy.rs this test so counted the runtime of the
//! next test, already waiting for the lock ("descriptors before 17, after
//! 18": its four minus three of the warm-up connection's sockets, still
//! closing when the baseline was taken).
//!
//! The whole process is counted, not only sockets with the proxy's or the
//! stand-in's address, so that any kind of leaked descriptor fails the test:
//! a socket leaked after a graceful close no longer has a peer address (nor
//! a row in /proc/net/tcp) to be recognised by.

mod tcp_common;

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use tcp_common::{Echo, roundtrip, settings, setup};

fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd").unwrap().count()
}

/// The open descriptors by kind ("socket": 3, "anon_inode:[eventfd]": 1,
/// "/dev/null": 1, ...), for the failure message: short even when thousands
/// leak.
fn fd_kinds() -> BTreeMap<String, usize> {
    let mut kinds = BTreeMap::new();
    for entry in std::fs::read_dir("/proc/self/fd").unwrap() {
        let Ok(target) = entry.and_then(|e| std::fs::read_link(e.path())) else {
            continue; // closed meanwhile
        };
        let target = target.to_string_lossy().into_owned();
        let kind = match target.split_once(":[") {
            Some((kind @ ("socket" | "pipe"), _)) => kind.to_string(),
            _ => target,
        };
        *kinds.entry(kind).or_insert(0) += 1;
    }
    kinds
}

/// Waits until at most `target` descriptors are open, or `within` has passed;
/// returns the last count. Closing is asynchronous: the proxy's and the
/// stand-in's tasks drop their sockets after the client has gone.
async fn fds_down_to(target: usize, within: Duration) -> usize {
    let deadline = Instant::now() + within;
    loop {
        let n = open_fds();
        if n <= target || Instant::now() >= deadline {
            return n;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thousands_of_connections_leak_no_descriptors() {
    let _ = rlimit::increase_nofile_limit(u64::MAX);
    let b = Echo::start("livy-2", "127.0.0.32").await;
    let s = setup(
        vec![b.node.clone()],
        Some(&b.node),
        settings(Duration::from_secs(10)),
    )
    .await;
    let listening = open_fds();
    // Warm up whatever the runtime allocates once, then let that
    // connection's sockets close: counted while still open, they would
    // hide as many leaked descriptors. Should the warm-up have allocated
    // something for good, the wait ends at its deadline and counts it in.
    roundtrip(s.addr, b"warm").await;
    let before = fds_down_to(listening, Duration::from_secs(10)).await;
    let rounds = 2000usize;
    let mut tasks = Vec::new();
    for i in 0..rounds {
        let addr = s.addr;
        tasks.push(tokio::spawn(async move {
            let msg = format!("conn {i}");
            roundtrip(addr, msg.as_bytes()).await == msg.as_bytes()
        }));
    }
    for t in tasks {
        assert!(t.await.unwrap());
    }
    // At least one upstream connection each (a connect that outlives
    // connect-timeout under this burst is retried, so more is possible).
    assert!(b.accepted.load(Ordering::SeqCst) > rounds);
    // Generous: on a loaded machine the last sockets of the burst take a
    // while to close; a real leak stays open past any deadline.
    let after = fds_down_to(before, Duration::from_secs(90)).await;
    assert!(
        after <= before,
        "descriptors before {before}, after {after}; open now: {:?}",
        fd_kinds()
    );
}
