//! TLS to Livy (`https://` nodes): the proxy binary in front of livy-sim
//! servers that serve TLS on a port of their own (`--tls-port`), with
//! certificates made here by rcgen (a private CA, server certificates for
//! the nodes' addresses or for another name, a client CA and a client
//! certificate). Real clients (curl); ZooKeeper and the Curator latch
//! where the leader must be known without probing (so that a refused
//! certificate shows as the request's 502, not as "no leader").
//!
//! The CA bundle renewed (SIGHUP, and a Kubernetes-style `..data` swap
//! without one).
//!
//! Also here: Livy's early answer to an upload (a 413 before the body
//! ends) reaches the client as Livy's answer, over plain HTTP and TLS.

mod common;

use std::process::Command;
use std::time::Duration;

use common::pki::Ca;
use common::{Proxy, SimCluster, SimPlan, ZooKeeper};

/// A private CA and what it signed, as PEM files in a temp dir.
struct Pki {
    dir: tempfile::TempDir,
}

impl Pki {
    /// A server CA with a certificate for `server_names`, and a client CA
    /// with a client certificate.
    fn new(server_names: &[&str]) -> Pki {
        let dir = tempfile::tempdir().expect("temp dir");
        let write = |name: &str, pem: String| std::fs::write(dir.path().join(name), pem).unwrap();
        let server_ca = Ca::new("livy test CA");
        let (cert, key) = server_ca.issue(server_names, "livy");
        write("ca.pem", server_ca.pem());
        write("server.pem", cert);
        write("server-key.pem", key);
        let client_ca = Ca::new("livy-proxy client CA");
        let (cert, key) = client_ca.client_until("livy-proxy", 2099);
        write("client-ca.pem", client_ca.pem());
        write("client.pem", cert);
        write("client-key.pem", key);
        Pki { dir }
    }

    fn path(&self, name: &str) -> String {
        self.dir.path().join(name).display().to_string()
    }
}

/// Sim addresses (as tests/common places them) for `n` nodes.
fn sim_ips(n: usize) -> Vec<String> {
    (0..n).map(|i| format!("127.0.0.{}", 11 + i)).collect()
}

/// A plan of `n` livy-sims each serving TLS on one shared free port with
/// `pki`'s server certificate; the port.
fn tls_plan(n: usize, pki: &Pki, more: &[&str]) -> (SimPlan, u16) {
    let ips = sim_ips(n);
    let refs: Vec<&str> = ips.iter().map(|s| s.as_str()).collect();
    let port = common::free_port_on_all(&refs);
    let mut plan = SimCluster::plan(n);
    plan.extra = [
        "--tls-port".to_string(),
        port.to_string(),
        "--tls-cert".into(),
        pki.path("server.pem"),
        "--tls-key".into(),
        pki.path("server-key.pem"),
    ]
    .into_iter()
    .chain(more.iter().map(|s| s.to_string()))
    .collect();
    (plan, port)
}

/// `--node livy-{i+1}=https://127.0.0.{11+i}:PORT` for every node.
fn https_nodes(n: usize, port: u16) -> Vec<String> {
    sim_ips(n)
        .iter()
        .enumerate()
        .flat_map(|(i, ip)| {
            [
                "--node".to_string(),
                format!("livy-{}=https://{ip}:{port}", i + 1),
            ]
        })
        .collect()
}

/// curl through the proxy: status code and body.
fn curl(url: &str, more: &[&str]) -> (u16, String) {
    let body = tempfile::NamedTempFile::new().expect("temp file");
    let out = Command::new("curl")
        .args(["-sS", "--max-time", "60", "-o"])
        .arg(body.path())
        .args(["-w", "%{http_code}"])
        .args(more)
        .arg(url)
        .output()
        .expect("curl runs");
    let code = String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .unwrap_or(0);
    assert!(
        out.status.success(),
        "curl {url} failed ({code}): {}",
        String::from_utf8_lossy(&out.stderr)
    );
    (
        code,
        std::fs::read_to_string(body.path()).unwrap_or_default(),
    )
}

/// Waits until GET `path` through `proxy` answers `code`; the body.
fn wait_for(proxy: &Proxy, path: &str, code: u16) -> String {
    let url = format!("{}{path}", proxy.url());
    let mut last = (0, String::new());
    let ok = common::wait_until(Duration::from_secs(30), || {
        last = curl(&url, &[]);
        last.0 == code
    });
    assert!(
        ok,
        "GET {path}: wanted {code}, last {} {}\n{}",
        last.0,
        last.1,
        proxy.logs()
    );
    last.1
}

fn kind(body: &str) -> String {
    serde_json::from_str::<serde_json::Value>(body)
        .ok()
        .and_then(|v| v["kind"].as_str().map(str::to_string))
        .unwrap_or_default()
}

/// Which node answered, from `/_sim`-style `x-livy-node`: curl with headers.
fn answered_by(proxy: &Proxy, path: &str) -> String {
    let out = Command::new("curl")
        .args(["-sS", "--max-time", "30", "-o", "/dev/null", "-D", "-"])
        .arg(format!("{}{path}", proxy.url()))
        .output()
        .expect("curl runs");
    let head = String::from_utf8_lossy(&out.stdout).to_string();
    head.lines()
        .find_map(|l| l.strip_prefix("x-livy-node: "))
        .map(|v| v.trim().to_string())
        .unwrap_or_else(|| panic!("no x-livy-node in {head}\n{}", proxy.logs()))
}

#[test]
fn an_https_livy_with_a_private_ca_is_proxied_and_probed() {
    let pki = Pki::new(&["127.0.0.11", "127.0.0.12", "127.0.0.13"]);
    let (plan, port) = tls_plan(3, &pki, &[]);
    // The static list: the probes find the leader (livy-2) over TLS.
    let cluster = plan.start_static(1);
    let mut args = https_nodes(3, port);
    args.extend(["--upstream-ca".to_string(), pki.path("ca.pem")]);
    let proxy = Proxy::start(&args);
    wait_for(&proxy, "/version", 200);
    assert_eq!(answered_by(&proxy, "/version"), "livy-2");
    // A body both ways.
    let (code, body) = curl(
        &format!("{}/sessions", proxy.url()),
        &[
            "-H",
            "content-type: application/json",
            "--data",
            r#"{"kind":"spark"}"#,
        ],
    );
    assert_eq!(code, 201, "{body}");
    let seen = cluster.requests(1);
    assert!(
        seen.iter()
            .any(|r| r["path"] == "/sessions" && r["method"] == "POST"),
        "{seen:?}"
    );
    let status = curl(&format!("{}/status", proxy.admin_url()), &[]).1;
    assert!(status.contains("livy-2"), "{status}");
}

#[test]
fn a_wrong_name_or_an_unknown_ca_is_a_502_upstream_tls_and_the_name_can_be_overridden() {
    let zk = ZooKeeper::start();
    // Certificates for a service name, not for the nodes' addresses.
    let pki = Pki::new(&["livy.test"]);
    let (plan, port) = tls_plan(2, &pki, &[]);
    let cluster = plan.start(&zk);
    let leader = cluster.wait_for_leader(Duration::from_secs(60));
    let start = |more: &[&str]| {
        let mut args = https_nodes(2, port);
        args.extend(["--zookeeper".to_string(), zk.connect_string()]);
        args.extend(more.iter().map(|s| s.to_string()));
        Proxy::start(&args)
    };

    let wrong_name = start(&["--upstream-ca", &pki.path("ca.pem")]);
    let body = wait_for(&wrong_name, "/version", 502);
    assert_eq!(kind(&body), "upstream_tls", "{body}");
    assert!(body.contains("not valid for name"), "{body}");
    let logs = wrong_name.logs();
    assert!(
        logs.contains("TLS to Livy failed") && logs.contains("not valid for name"),
        "{logs}"
    );

    let unknown_ca = start(&["--upstream-server-name", "livy.test"]);
    let body = wait_for(&unknown_ca, "/version", 502);
    assert_eq!(kind(&body), "upstream_tls", "{body}");
    assert!(body.contains("UnknownIssuer"), "{body}");
    assert!(unknown_ca.logs().contains("UnknownIssuer"));

    let named = start(&[
        "--upstream-ca",
        &pki.path("ca.pem"),
        "--upstream-server-name",
        "livy.test",
    ]);
    wait_for(&named, "/version", 200);
    assert_eq!(
        answered_by(&named, "/version"),
        format!("livy-{}", leader + 1)
    );
}

#[test]
fn a_livy_that_requires_a_client_certificate_gets_the_proxys() {
    let pki = Pki::new(&["127.0.0.11"]);
    let client_ca = pki.path("client-ca.pem");
    let (plan, port) = tls_plan(1, &pki, &["--tls-client-ca", &client_ca]);
    let cluster = plan.start_static(0);
    let mut args = https_nodes(1, port);
    args.extend(["--upstream-ca".to_string(), pki.path("ca.pem")]);

    // Without one: Livy refuses the handshake; the probes say why.
    let mut without = args.clone();
    without.extend(["--hold-timeout".to_string(), "1s".to_string()]);
    let proxy = Proxy::start(&without);
    let body = wait_for(&proxy, "/version", 503);
    assert!(body.contains("TLS to 127.0.0.11"), "{body}");
    drop(proxy);

    args.extend([
        "--upstream-client-cert".to_string(),
        pki.path("client.pem"),
        "--upstream-client-key".to_string(),
        pki.path("client-key.pem"),
    ]);
    let proxy = Proxy::start(&args);
    wait_for(&proxy, "/version", 200);
    assert_eq!(answered_by(&proxy, "/version"), "livy-1");
    assert!(!cluster.requests(0).is_empty());
    // Its expiry is exported like a listener's, for the same alert.
    assert_eq!(
        metric(
            &proxy,
            "livy_proxy_tls_certificate_expiry_seconds{service=\"default\",listener=\"upstream\"}"
        ),
        Some(4_070_908_800.0),
        "2099-01-01, the client certificate's notAfter:\n{}",
        curl(&format!("{}/metrics", proxy.admin_url()), &[]).1
    );
}

#[test]
fn a_stale_redirect_between_https_nodes_is_followed() {
    let pki = Pki::new(&["127.0.0.11", "127.0.0.12", "127.0.0.13"]);
    let (plan, port) = tls_plan(3, &pki, &[]);
    let cluster = plan.start_static(0);
    let mut args = https_nodes(3, port);
    // Probing rarely: the view stays stale unless a redirect corrects it.
    args.extend([
        "--upstream-ca".to_string(),
        pki.path("ca.pem"),
        "--probe-interval".to_string(),
        "60s".to_string(),
    ]);
    let proxy = Proxy::start(&args);
    wait_for(&proxy, "/version", 200);
    assert_eq!(answered_by(&proxy, "/version"), "livy-1");
    // livy-3 takes over; livy-1 and livy-2 redirect to it, with https://.
    cluster.set_role(2, 2);
    cluster.set_role(0, 2);
    cluster.set_role(1, 2);
    cluster.clear_requests(0);
    assert_eq!(answered_by(&proxy, "/sessions"), "livy-3");
    let redirected = cluster.requests(0).iter().any(|r| r["path"] == "/sessions");
    assert!(redirected, "the stale leader was asked first");
    assert!(
        proxy.logs().contains("redirected"),
        "the redirect was followed:\n{}",
        proxy.logs()
    );
    // The view moved: the next request goes to livy-3 at once.
    cluster.clear_requests(0);
    assert_eq!(answered_by(&proxy, "/sessions"), "livy-3");
    assert!(cluster.requests(0).iter().all(|r| r["path"] != "/sessions"));
}

/// A file of `size` bytes of JSON-ish text.
fn upload_file(size: usize) -> tempfile::NamedTempFile {
    let file = tempfile::NamedTempFile::new().expect("temp file");
    let line = b"{\"code\": \"val x = spark.range(1000).count()\"}\n";
    let mut data = Vec::with_capacity(size);
    while data.len() < size {
        data.extend_from_slice(line);
    }
    data.truncate(size);
    std::fs::write(file.path(), data).expect("write");
    file
}

/// A 413 from Livy before the upload ends, for a body buffered by the
/// proxy (Livy reads none of it) and one streamed (Livy reads 64 KiB,
/// then refuses the rest): the client gets Livy's 413, not a 502.
fn early_answers_reach_the_client(tls: Option<&Pki>) {
    let after = |bytes: &str, tls: Option<&Pki>| {
        let reject = ["--reject-body-after", bytes];
        let (plan, nodes) = match tls {
            Some(pki) => {
                let (plan, port) = tls_plan(1, pki, &reject);
                let mut nodes = https_nodes(1, port);
                nodes.extend(["--upstream-ca".to_string(), pki.path("ca.pem")]);
                (plan, nodes)
            }
            None => {
                let mut plan = SimCluster::plan(1);
                plan.extra = reject.iter().map(|s| s.to_string()).collect();
                let nodes = vec!["--node".to_string(), plan.node_arg(0)];
                (plan, nodes)
            }
        };
        let cluster = plan.start_static(0);
        let mut args = nodes;
        // 24 MiB may be buffered: far more than the sockets between the
        // proxy and Livy hold, so the write is still going when Livy answers.
        args.extend(["--max-replay-body".to_string(), "32MiB".to_string()]);
        args.extend(["--max-buffered-bodies".to_string(), "64MiB".to_string()]);
        let proxy = Proxy::start(&args);
        wait_for(&proxy, "/version", 200);
        (cluster, proxy)
    };
    let upload = upload_file(24 << 20);
    let data = format!("@{}", upload.path().display());
    let big = upload_file(48 << 20);
    let big_data = format!("@{}", big.path().display());
    for bytes in ["0", "65536"] {
        let (_cluster, proxy) = after(bytes, tls);
        let url = format!("{}/sessions/0/statements", proxy.url());
        // Buffered by the proxy (under max-replay-body).
        let (code, body) = curl(
            &url,
            &[
                "-H",
                "content-type: application/json",
                "--data-binary",
                &data,
            ],
        );
        assert_eq!(
            code,
            413,
            "buffered, Livy reads {bytes}: {body}\n{}",
            proxy.logs()
        );
        assert!(body.contains("refused after"), "{body}");
        // Streamed (over max-replay-body).
        let (code, body) = curl(
            &url,
            &[
                "-H",
                "content-type: application/json",
                "--data-binary",
                &big_data,
            ],
        );
        assert_eq!(
            code,
            413,
            "streamed, Livy reads {bytes}: {body}\n{}",
            proxy.logs()
        );
        assert!(body.contains("refused after"), "{body}");
    }
}

#[test]
fn an_early_answer_to_an_upload_is_livys_answer_over_http() {
    early_answers_reach_the_client(None);
}

#[test]
fn an_early_answer_to_an_upload_is_livys_answer_over_tls() {
    let pki = Pki::new(&["127.0.0.11"]);
    early_answers_reach_the_client(Some(&pki));
}

#[test]
fn a_renewed_upstream_ca_is_read_again_on_sighup() {
    let zk = ZooKeeper::start();
    let pki = Pki::new(&["livy.test"]);
    let (plan, port) = tls_plan(2, &pki, &[]);
    let cluster = plan.start(&zk);
    cluster.wait_for_leader(Duration::from_secs(60));
    // The proxy starts trusting another CA than the one that signed Livy's
    // certificate: refused.
    let bundle = pki.path("bundle.pem");
    std::fs::copy(pki.path("client-ca.pem"), &bundle).unwrap();
    let mut args = https_nodes(2, port);
    args.extend([
        "--zookeeper".to_string(),
        zk.connect_string(),
        "--upstream-ca".to_string(),
        bundle.clone(),
        "--upstream-server-name".to_string(),
        "livy.test".to_string(),
    ]);
    let proxy = Proxy::start(&args);
    let body = wait_for(&proxy, "/version", 502);
    assert_eq!(kind(&body), "upstream_tls", "{body}");
    // The bundle renewed in place, then SIGHUP: the next connection to
    // Livy trusts it, without a restart.
    std::fs::copy(pki.path("ca.pem"), &bundle).unwrap();
    proxy.signal(libc::SIGHUP);
    wait_for(&proxy, "/version", 200);
    assert!(
        proxy
            .logs()
            .contains("TLS to Livy: CA bundle and client certificate reloaded"),
        "{}",
        proxy.logs()
    );
}

/// A Kubernetes Secret volume holding one file, `name`: a symlink to
/// `..data/name`, `..data` a symlink to a timestamped directory that an
/// update replaces by renaming a new symlink over it, as the kubelet does.
struct SecretFile {
    dir: std::path::PathBuf,
    name: &'static str,
    version: u32,
}

impl SecretFile {
    fn new(dir: &std::path::Path, name: &'static str, text: &str) -> SecretFile {
        let dir = dir.join("secret");
        std::fs::create_dir(&dir).unwrap();
        let mut s = SecretFile {
            dir,
            name,
            version: 0,
        };
        s.update(text);
        std::os::unix::fs::symlink(format!("..data/{name}"), s.dir.join(name)).unwrap();
        s
    }

    fn update(&mut self, text: &str) {
        let old = format!("..2026_12_01_00_00_0{}.000000001", self.version);
        self.version += 1;
        let new = format!("..2026_12_01_00_00_0{}.000000001", self.version);
        std::fs::create_dir(self.dir.join(&new)).unwrap();
        std::fs::write(self.dir.join(&new).join(self.name), text).unwrap();
        std::os::unix::fs::symlink(&new, self.dir.join("..data_tmp")).unwrap();
        std::fs::rename(self.dir.join("..data_tmp"), self.dir.join("..data")).unwrap();
        let _ = std::fs::remove_dir_all(self.dir.join(old));
    }

    fn path(&self) -> String {
        self.dir.join(self.name).display().to_string()
    }
}

/// The value of one series in the proxy's /metrics.
fn metric(proxy: &Proxy, series: &str) -> Option<f64> {
    let text = curl(&format!("{}/metrics", proxy.admin_url()), &[]).1;
    common::metric(&text, series)
}

#[test]
fn a_renewed_upstream_ca_is_used_after_a_kubernetes_secret_swap_without_sighup() {
    let zk = ZooKeeper::start();
    let pki = Pki::new(&["livy.test"]);
    let (plan, port) = tls_plan(2, &pki, &[]);
    let cluster = plan.start(&zk);
    cluster.wait_for_leader(Duration::from_secs(60));
    let wrong = std::fs::read_to_string(pki.path("client-ca.pem")).unwrap();
    let mut secret = SecretFile::new(pki.dir.path(), "ca.crt", &wrong);
    let mut args = https_nodes(2, port);
    args.extend([
        "--zookeeper".to_string(),
        zk.connect_string(),
        "--upstream-ca".to_string(),
        secret.path(),
        "--upstream-server-name".to_string(),
        "livy.test".to_string(),
    ]);
    let proxy = Proxy::start(&args);
    let body = wait_for(&proxy, "/version", 502);
    assert_eq!(kind(&body), "upstream_tls", "{body}");
    let series = |result: &str| {
        format!(
            "livy_proxy_tls_reloads_total{{service=\"default\",listener=\"upstream\",result=\"{result}\"}}"
        )
    };
    assert_eq!(metric(&proxy, &series("failure")), Some(0.0));

    // A bad bundle first: kept out, counted, the old one in force.
    secret.update("not a certificate\n");
    assert!(
        common::wait_until(Duration::from_secs(30), || metric(
            &proxy,
            &series("failure")
        ) == Some(1.0)),
        "{}",
        proxy.logs()
    );
    assert!(proxy.logs().contains("TLS to Livy: reload failed"));
    assert_eq!(kind(&wait_for(&proxy, "/version", 502)), "upstream_tls");

    // The right CA: the next connection to Livy trusts it, no SIGHUP.
    secret.update(&std::fs::read_to_string(pki.path("ca.pem")).unwrap());
    wait_for(&proxy, "/version", 200);
    assert!(metric(&proxy, &series("success")) >= Some(1.0));
    assert!(
        proxy.logs().lines().any(|l| l
            .contains("TLS to Livy: CA bundle and client certificate reloaded")
            && l.contains("file change")),
        "{}",
        proxy.logs()
    );
}
