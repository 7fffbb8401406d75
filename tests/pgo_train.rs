//! The training run of the profile-guided build (`bench/pgo_train.py`,
//! which `scripts/pgo-build`, and so the container image build, runs
//! against an instrumented binary), here against this build's binary: every
//! load it trains on must get answers, and every proxy it starts must exit
//! cleanly on SIGTERM, which is when an instrumented binary writes its
//! profile. A flag renamed under the script, or a load that only meets
//! errors, fails here rather than in an image build or, worse, as a profile
//! of the error paths.
//!
//! nginx (with its stream module), wrk and iperf3 come from Debian
//! (scripts/test installs them); everything listens on 127.0.0.1 and the
//! script stops what it started.

use std::path::PathBuf;
use std::process::Command;

#[test]
fn the_pgo_training_run_gets_answers_from_every_load() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let out = Command::new("python3")
        .arg(root.join("bench/pgo_train.py"))
        .arg(env!("CARGO_BIN_EXE_livy-proxy"))
        .args(["--seconds", "1"])
        .output()
        .expect("python3");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "the training run failed:\n{stdout}\n{stderr}"
    );
    // One line per load, with its count of answers (or Mbit/s).
    let loads: Vec<(&str, u64)> = stdout
        .lines()
        .filter_map(|l| l.trim().rsplit_once(": "))
        .filter_map(|(load, n)| Some((load, n.parse().ok()?)))
        .collect();
    for expected in [
        "GET, 16 connections",
        "GET, 128 connections",
        "POST with a body, 16 connections",
        "HTTPS GET, 16 connections",
        "JDBC stream, up",
        "JDBC stream, down",
        "JDBC connections",
    ] {
        let n = loads
            .iter()
            .find(|(load, _)| *load == expected)
            .map(|(_, n)| *n);
        assert!(
            n.is_some_and(|n| n > 0),
            "{expected}: {n:?} answers\n{stdout}"
        );
    }
}
