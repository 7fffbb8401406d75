//! The binary's command line: bad configuration is one line naming the key
//! and exit code 2; `--help` and `--version` work.

use std::io::Write;
use std::process::{Command, Output};

/// Runs the binary to its exit; one that is still running after 30 s (a
/// configuration it should have refused) is killed, so that the test
/// fails instead of hanging.
fn run(args: &[&str]) -> Output {
    let child = Command::new(env!("CARGO_BIN_EXE_livy-proxy"))
        .args(args)
        .env_clear()
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("the binary runs");
    let pid = child.id();
    let (done, exited) = std::sync::mpsc::channel::<()>();
    let watchdog = std::thread::spawn(move || {
        if exited
            .recv_timeout(std::time::Duration::from_secs(30))
            .is_err()
        {
            let _ = Command::new("kill").args(["-9", &pid.to_string()]).status();
        }
    });
    let out = child.wait_with_output().expect("the binary runs");
    let _ = done.send(());
    let _ = watchdog.join();
    out
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).to_string()
}

#[test]
fn bad_file_value_exits_2_naming_the_key() {
    let mut f = tempfile::NamedTempFile::new().unwrap();
    f.write_all(b"zookeeper = \"127.0.0.1:2181\"\nhold-timeout = \"forever\"\n")
        .unwrap();
    let out = run(&["--config", f.path().to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    let err = stderr(&out);
    assert!(err.contains("hold-timeout"), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "one line: {err}");
}

#[test]
fn unknown_file_key_exits_2_naming_it() {
    let mut f = tempfile::NamedTempFile::new().unwrap();
    f.write_all(b"zookeeper = \"127.0.0.1:2181\"\nzookeper-path = \"/x\"\n")
        .unwrap();
    let out = run(&["--config", f.path().to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("zookeper-path"), "{}", stderr(&out));
}

#[test]
fn bad_flag_values_exit_2_naming_the_flag() {
    for (args, key) in [
        (
            vec!["--zookeeper", "127.0.0.1:2181", "--hold-timeout", "soon"],
            "--hold-timeout",
        ),
        (vec!["--zookeeper", "no-port-here"], "zookeeper"),
        (vec!["--node", "ftp://livy:1"], "node"),
        (
            vec!["--zookeeper", "a:1", "--leader-path", "relative"],
            "leader-path",
        ),
        (
            vec!["--zookeeper", "a:1", "--listen", "not-an-address"],
            "--listen",
        ),
        // tracing would skip the directive and log errors only.
        (
            vec!["--zookeeper", "a:1", "--log-level", "livy_proxy=verbose"],
            "log-level",
        ),
    ] {
        let out = run(&args);
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        assert!(stderr(&out).contains(key), "{args:?}: {}", stderr(&out));
        assert_eq!(stderr(&out).trim().lines().count(), 1, "{}", stderr(&out));
    }
}

#[test]
fn missing_file_exits_2() {
    let out = run(&["--config", "/nonexistent/livy-proxy.toml"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("/nonexistent/livy-proxy.toml"));
}

#[test]
fn nothing_to_discover_from_exits_2() {
    let out = run(&[]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("zookeeper"));
}

#[test]
fn help_and_version() {
    let out = run(&["--help"]);
    assert!(out.status.success());
    let help = String::from_utf8_lossy(&out.stdout);
    for flag in [
        "--config",
        "--listen",
        "--zookeeper",
        "--leader-path",
        "--node",
        "--hold-timeout",
    ] {
        assert!(help.contains(flag), "{flag} missing from --help");
    }
    let out = run(&["--version"]);
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains(env!("CARGO_PKG_VERSION")));
}

#[test]
fn shipped_example_config_is_valid() {
    // --help exits before serving; a valid config with --version does too,
    // so check the file through the library instead.
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/deploy/livy-proxy.example.toml"
    );
    let config = livy_proxy::config::Config::from_args(["livy-proxy", "--config", path])
        .expect("the example config loads");
    assert_eq!(config.discovery.nodes.load().len(), 3);
}
