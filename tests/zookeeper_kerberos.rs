//! Kerberos to ZooKeeper (issue 20): a throwaway MIT KDC (realm LIVY.TEST
//! on a free loopback port), the real Debian ZooKeeper taking only SASL
//! (`Krb5LoginModule` with its keytab in the JAAS `Server` section), the
//! Curator electors logging in with their own keytab through a JAAS
//! `Client` section, as Livy does, and the proxy with
//! `zk-kerberos-principal` / `zk-kerberos-keytab` (no `kinit`). It follows
//! the latch leader and a failover; with a wrong principal, keytab or
//! service host it says why, never probes and never routes. Expired
//! tickets are renewed from the keytab at a reconnect, and a KDC down at
//! start is waited for, without probing.
//!
//! The KDC's tools come from Debian's krb5-kdc, krb5-admin-server and
//! krb5-user (scripts/deps.sh): missing, the tests fail.

#![cfg(feature = "kerberos")]

mod common;

use std::net::{TcpStream, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use common::{
    Proc, Proxy, SimCluster, ZkOptions, ZooKeeper, free_port, http_request, wait_served_by,
    wait_until,
};
use http::StatusCode;

const DEADLINE: Duration = Duration::from_secs(60);
const REALM: &str = "LIVY.TEST";

/// The proxy's principal: in `proxy.keytab` after `other/localhost`, so a
/// proxy that took the keytab's first entry would log in as the wrong one.
const PROXY_PRINCIPAL: &str = "livy-proxy/localhost@LIVY.TEST";

/// A KDC for one test: its files in a temp dir, `krb5kdc` in the
/// foreground (killed on drop), keytabs for ZooKeeper, the electors and
/// the proxy.
struct Kdc {
    dir: tempfile::TempDir,
    port: u16,
    proc: Option<Proc>,
}

/// A Kerberos tool from Debian's packages (in /usr/sbin, which a non-root
/// PATH may lack).
fn tool(name: &str) -> PathBuf {
    for dir in ["/usr/sbin", "/usr/bin", "/sbin", "/bin"] {
        let p = Path::new(dir).join(name);
        if p.exists() {
            return p;
        }
    }
    panic!(
        "{name} is missing: run ./scripts/test, which installs krb5-kdc, krb5-admin-server and krb5-user"
    );
}

/// A port free for both TCP and UDP on 127.0.0.1 (the KDC serves both).
fn free_tcp_udp_port() -> u16 {
    loop {
        let port = free_port();
        if UdpSocket::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

impl Kdc {
    fn start() -> Kdc {
        let dir = tempfile::tempdir().expect("temp dir");
        let port = free_tcp_udp_port();
        let d = dir.path().display().to_string();
        // No DNS anywhere: names are taken as written, so the service
        // principal is exactly zookeeper/<host in the connect string>.
        std::fs::write(
            dir.path().join("krb5.conf"),
            format!(
                "[libdefaults]\n default_realm = {REALM}\n dns_lookup_kdc = false\n \
                 dns_lookup_realm = false\n dns_canonicalize_hostname = false\n rdns = false\n \
                 udp_preference_limit = 1\n\
                 [realms]\n {REALM} = {{\n  kdc = 127.0.0.1:{port}\n }}\n"
            ),
        )
        .unwrap();
        std::fs::write(
            dir.path().join("kdc.conf"),
            format!(
                "[kdcdefaults]\n kdc_listen = 127.0.0.1:{port}\n kdc_tcp_listen = 127.0.0.1:{port}\n\
                 [realms]\n {REALM} = {{\n  database_name = {d}/principal\n  \
                 key_stash_file = {d}/stash\n  acl_file = {d}/kadm5.acl\n  \
                 supported_enctypes = aes256-cts-hmac-sha1-96:normal aes128-cts-hmac-sha1-96:normal\n }}\n\
                 [logging]\n kdc = FILE:{d}/kdc.log\n"
            ),
        )
        .unwrap();
        std::fs::write(dir.path().join("kadm5.acl"), "").unwrap();
        let kdc = |cmd: &mut Command| -> Output {
            let out = cmd
                .env("KRB5_CONFIG", dir.path().join("krb5.conf"))
                .env("KRB5_KDC_PROFILE", dir.path().join("kdc.conf"))
                .stdin(Stdio::null())
                .output()
                .expect("a Kerberos tool runs");
            assert!(
                out.status.success(),
                "{cmd:?} failed:\n{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
            out
        };
        kdc(Command::new(tool("kdb5_util")).args([
            "create",
            "-s",
            "-r",
            REALM,
            "-P",
            "test-master-password",
        ]));
        let kadmin = |query: String| {
            kdc(Command::new(tool("kadmin.local")).args(["-r", REALM, "-q", &query]));
        };
        for p in [
            "zookeeper/localhost",
            "livy/localhost",
            "livy-proxy/localhost",
            "other/localhost",
            "stale/localhost",
        ] {
            kadmin(format!("addprinc -randkey {p}"));
        }
        let keytab = |name: &str, principals: &str| {
            kadmin(format!("ktadd -k {d}/{name} {principals}"));
        };
        keytab("zookeeper.keytab", "zookeeper/localhost");
        keytab("livy.keytab", "livy/localhost");
        keytab("proxy.keytab", "other/localhost livy-proxy/localhost");
        keytab("other.keytab", "other/localhost");
        // Keys that were right once: the KDC has new ones since.
        keytab("stale.keytab", "stale/localhost");
        kadmin("cpw -randkey stale/localhost".to_string());
        let mut kdc = Kdc {
            dir,
            port,
            proc: None,
        };
        kdc.start_again();
        kdc
    }

    /// Runs `krb5kdc` (again, after `stop`) and waits until it listens.
    fn start_again(&mut self) {
        let log = std::fs::File::create(self.dir.path().join("krb5kdc.out")).unwrap();
        let mut cmd = Command::new(tool("krb5kdc"));
        cmd.arg("-n")
            .env("KRB5_CONFIG", self.krb5_conf())
            .env("KRB5_KDC_PROFILE", self.path("kdc.conf"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log);
        self.proc = Some(Proc::spawn("krb5kdc", &mut cmd));
        let port = self.port;
        assert!(
            wait_until(DEADLINE, || TcpStream::connect(("127.0.0.1", port)).is_ok()),
            "the KDC never listened:\n{}",
            self.read("krb5kdc.out")
        );
    }

    /// Stops the KDC (SIGTERM): an outage.
    fn stop(&mut self) {
        if let Some(mut p) = self.proc.take() {
            p.terminate();
        }
    }

    fn path(&self, name: &str) -> String {
        self.dir.path().join(name).display().to_string()
    }

    /// One `kadmin.local` query against the running KDC's database.
    fn kadmin(&self, query: &str) {
        let out = Command::new(tool("kadmin.local"))
            .args(["-r", REALM, "-q", query])
            .env("KRB5_CONFIG", self.krb5_conf())
            .env("KRB5_KDC_PROFILE", self.path("kdc.conf"))
            .stdin(Stdio::null())
            .output()
            .expect("kadmin.local runs");
        assert!(out.status.success(), "{query}: {out:?}");
    }

    /// How many initial tickets (AS requests) the KDC gave `principal`.
    fn logins(&self, principal: &str) -> usize {
        self.read("kdc.log")
            .lines()
            .filter(|l| l.contains("AS_REQ") && l.contains("ISSUE") && l.contains(principal))
            .count()
    }

    fn read(&self, name: &str) -> String {
        std::fs::read_to_string(self.dir.path().join(name)).unwrap_or_default()
    }

    fn krb5_conf(&self) -> String {
        self.path("krb5.conf")
    }

    /// A JAAS file with one `Krb5LoginModule` section logging in from a
    /// keytab, as ZooKeeper's and Livy's documentation show.
    fn jaas(&self, file: &str, section: &str, keytab: &str, principal: &str) -> String {
        std::fs::write(
            self.dir.path().join(file),
            format!(
                "{section} {{\n  com.sun.security.auth.module.Krb5LoginModule required\n  \
                 useKeyTab=true\n  keyTab=\"{}\"\n  storeKey=true\n  useTicketCache=false\n  \
                 principal=\"{principal}\";\n}};\n",
                self.path(keytab)
            ),
        )
        .unwrap();
        self.path(file)
    }

    /// ZooKeeper taking SASL only: every unauthenticated session refused.
    fn zookeeper(&self) -> ZooKeeper {
        let jaas = self.jaas(
            "server.jaas",
            "Server",
            "zookeeper.keytab",
            "zookeeper/localhost@LIVY.TEST",
        );
        ZooKeeper::start_with(ZkOptions {
            cfg: "authProvider.1=org.apache.zookeeper.server.auth.SASLAuthenticationProvider\n\
                  enforce.auth.enabled=true\nenforce.auth.schemes=sasl\n"
                .to_string(),
            jvm: vec![
                format!("-Djava.security.auth.login.config={jaas}"),
                format!("-Djava.security.krb5.conf={}", self.krb5_conf()),
            ],
            tls_only: false,
        })
    }

    /// The JVM flags of a Kerberized Livy server's ZooKeeper client.
    fn elector_flags(&self) -> String {
        let jaas = self.jaas(
            "client.jaas",
            "Client",
            "livy.keytab",
            "livy/localhost@LIVY.TEST",
        );
        format!(
            "-Djava.security.auth.login.config={jaas} -Djava.security.krb5.conf={} \
             -Dzookeeper.server.principal=zookeeper/localhost@LIVY.TEST",
            self.krb5_conf()
        )
    }
}

fn cluster(zk: &ZooKeeper, kdc: &Kdc) -> SimCluster {
    let mut plan = SimCluster::plan(3);
    plan.env
        .push(("JAVA_TOOL_OPTIONS".to_string(), kdc.elector_flags()));
    plan.start(zk)
}

/// The proxy in front of `cluster` with `more` flags, `KRB5_CONFIG` set
/// to the KDC's; it holds a request up to `hold` for a leader.
fn proxy(zk: &ZooKeeper, cluster: &SimCluster, kdc: &Kdc, hold: &str, more: &[String]) -> Proxy {
    let mut args = vec![
        "--zookeeper".to_string(),
        zk.connect_string(),
        "--hold-timeout".into(),
        hold.into(),
    ];
    for i in 0..3 {
        args.extend(["--node".to_string(), cluster.node_arg(i)]);
    }
    args.extend(more.iter().cloned());
    Proxy::start_with_env(&args, &[("KRB5_CONFIG", &kdc.krb5_conf())])
}

/// `--zk-kerberos-principal P --zk-kerberos-keytab K [--zk-kerberos-server-host localhost]`.
fn kerberos(kdc: &Kdc, principal: &str, keytab: &str, server_host: bool) -> Vec<String> {
    let mut args = vec![
        "--zk-kerberos-principal".to_string(),
        principal.to_string(),
        "--zk-kerberos-keytab".into(),
        kdc.path(keytab),
    ];
    if server_host {
        // The connect string says 127.0.0.1; the servers' principal is
        // zookeeper/localhost.
        args.extend(["--zk-kerberos-server-host".to_string(), "localhost".into()]);
    }
    args
}

async fn admin(proxy: &Proxy, path: &str) -> (StatusCode, String) {
    let (status, _, body) = http_request(
        "GET",
        &format!("{}{path}", proxy.admin_url()),
        &[],
        Vec::new(),
    )
    .await;
    (status, body)
}

/// A proxy that cannot log in: the log says `why`, `/status` says
/// `kerberos-failed` or `auth-failed`, the node list is never probed
/// instead, `/readyz` stays 503 and no request reaches a Livy server.
async fn never_routes(proxy: &Proxy, cluster: &SimCluster, why: &str, state: &str) {
    assert!(
        wait_until(DEADLINE, || proxy.logs().contains(why)),
        "no {why:?} in the log:\n{}",
        proxy.logs()
    );
    for i in 0..3 {
        cluster.clear_requests(i);
    }
    let (status, _, _) = http_request(
        "GET",
        &format!("{}/sessions", proxy.url()),
        &[("x-test", "never-routed")],
        Vec::new(),
    )
    .await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{}", proxy.logs());
    let (ready, body) = admin(proxy, "/readyz").await;
    assert_eq!(ready, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    let (_, status) = admin(proxy, "/status").await;
    assert!(status.contains(state), "{status}");
    for i in 0..3 {
        assert!(
            cluster
                .requests(i)
                .iter()
                .all(|r| r["headers"]["x-test"] != "never-routed"),
            "livy-{} got the request",
            i + 1
        );
    }
    assert!(
        !proxy.logs().contains("probing the node list"),
        "fell back to probing:\n{}",
        proxy.logs()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_kerberos_the_proxy_follows_the_leader_and_a_failover_and_bad_credentials_never_route()
{
    let kdc = Kdc::start();
    let zk = kdc.zookeeper();
    let mut cluster = cluster(&zk, &kdc);
    let right = proxy(
        &zk,
        &cluster,
        &kdc,
        "30s",
        &kerberos(&kdc, PROXY_PRINCIPAL, "proxy.keytab", true),
    );
    // Without the host override the proxy asks for zookeeper/127.0.0.1,
    // which the KDC does not know.
    let wrong_host = proxy(
        &zk,
        &cluster,
        &kdc,
        "2s",
        &kerberos(&kdc, PROXY_PRINCIPAL, "proxy.keytab", false),
    );

    let leader = cluster.wait_for_leader(DEADLINE);
    wait_served_by(&right, &format!("livy-{}", leader + 1), DEADLINE).await;
    assert!(
        right
            .logs()
            .contains("SASL GSSAPI (Kerberos) as livy-proxy/localhost@LIVY.TEST"),
        "{}",
        right.logs()
    );
    // The proxy's ticket for ZooKeeper is the configured principal's, not
    // the keytab's first one's (the KDC logs every ticket it issues).
    let ticket = |client: &str| format!("{client}@LIVY.TEST for zookeeper/localhost@LIVY.TEST");
    assert!(
        wait_until(DEADLINE, || kdc
            .read("kdc.log")
            .contains(&ticket("livy-proxy/localhost"))),
        "the KDC never issued the proxy's ticket for ZooKeeper:\n{}",
        kdc.read("kdc.log")
    );
    assert!(!kdc.read("kdc.log").contains(&ticket("other/localhost")));
    let (_, status) = admin(&right, "/status").await;
    assert!(status.contains("\"connected\""), "{status}");
    cluster.terminate(leader);
    let next = cluster.wait_for_leader(DEADLINE);
    assert_ne!(next, leader);
    wait_served_by(&right, &format!("livy-{}", next + 1), DEADLINE).await;

    never_routes(
        &wrong_host,
        &cluster,
        "zookeeper/127.0.0.1@LIVY.TEST not found in Kerberos database",
        "kerberos-failed",
    )
    .await;
}

fn run(kdc: &Kdc, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_livy-proxy"))
        .args(args)
        .env_clear()
        .env("KRB5_CONFIG", kdc.krb5_conf())
        .output()
        .expect("the binary runs")
}

/// Exit 2 and one line on stderr naming `key` (and saying `what`).
fn assert_config_error(out: &Output, key: &str, what: &str) {
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains(&format!("`{key}`")), "{err}");
    assert!(err.contains(what), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "one line: {err}");
}

#[test]
fn wrong_kerberos_keys_are_config_errors_naming_them() {
    let kdc = Kdc::start();
    let garbage = kdc.path("garbage.keytab");
    std::fs::write(&garbage, "not a keytab\n").unwrap();
    let base = ["--zookeeper", "127.0.0.1:1", "--admin-listen", "off"];
    let with = |more: &[&str]| {
        let mut a = base.to_vec();
        a.extend_from_slice(more);
        run(&kdc, &a)
    };
    let proxy_keytab = kdc.path("proxy.keytab");
    // The keytab does not hold the principal.
    assert_config_error(
        &with(&[
            "--zk-kerberos-principal",
            PROXY_PRINCIPAL,
            "--zk-kerberos-keytab",
            &kdc.path("other.keytab"),
        ]),
        "zk-kerberos-principal",
        "cannot log in with zk-kerberos-keytab",
    );
    // Keys the KDC no longer takes (changed since the keytab was written).
    assert_config_error(
        &with(&[
            "--zk-kerberos-principal",
            "stale/localhost@LIVY.TEST",
            "--zk-kerberos-keytab",
            &kdc.path("stale.keytab"),
        ]),
        "zk-kerberos-principal",
        "Decrypt integrity check failed",
    );
    assert_config_error(
        &with(&["--zk-kerberos-keytab", "/nonexistent.keytab"]),
        "zk-kerberos-keytab",
        "/nonexistent.keytab",
    );
    assert_config_error(
        &with(&["--zk-kerberos-keytab", &garbage]),
        "zk-kerberos-keytab",
        "not a Kerberos keytab",
    );
    // A key of the other mechanism.
    assert_config_error(
        &with(&[
            "--zk-sasl-mechanism",
            "digest-md5",
            "--zk-kerberos-keytab",
            &proxy_keytab,
        ]),
        "zk-kerberos-keytab",
        "digest-md5",
    );
    let password = kdc.path("password");
    std::fs::write(&password, "secret\n").unwrap();
    assert_config_error(
        &with(&[
            "--zk-sasl-mechanism",
            "gssapi",
            "--zk-sasl-user",
            "livy",
            "--zk-sasl-password-file",
            &password,
        ]),
        "zk-sasl-user",
        "gssapi",
    );
    assert_config_error(
        &with(&[
            "--zk-sasl-user",
            "livy",
            "--zk-sasl-password-file",
            &password,
            "--zk-kerberos-keytab",
            &proxy_keytab,
        ]),
        "zk-sasl-mechanism",
        "both",
    );
    assert_config_error(
        &with(&["--zk-sasl-mechanism", "plain"]),
        "zk-sasl-mechanism",
        "plain",
    );
    assert_config_error(
        &with(&["--zk-sasl-mechanism", "digest-md5"]),
        "zk-sasl-user",
        "needs zk-sasl-user",
    );
    // Without ZooKeeper the keys would do nothing: refused, not ignored.
    assert_config_error(
        &run(
            &kdc,
            &[
                "--node",
                "127.0.0.1:1",
                "--admin-listen",
                "off",
                "--zk-kerberos-keytab",
                &proxy_keytab,
            ],
        ),
        "zk-kerberos-keytab",
        "without zookeeper",
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_ticket_is_renewed_from_the_keytab_when_the_proxy_reconnects() {
    let kdc = Kdc::start();
    // Tickets of the proxy's principal last 20 s.
    kdc.kadmin("modprinc -maxlife \"20 seconds\" livy-proxy/localhost");
    let mut zk = kdc.zookeeper();
    let mut cluster = cluster(&zk, &kdc);
    let proxy = proxy(
        &zk,
        &cluster,
        &kdc,
        "30s",
        &kerberos(&kdc, PROXY_PRINCIPAL, "proxy.keytab", true),
    );
    let leader = cluster.wait_for_leader(DEADLINE);
    wait_served_by(&proxy, &format!("livy-{}", leader + 1), DEADLINE).await;
    let logins = kdc.logins(PROXY_PRINCIPAL);
    assert!(logins >= 1, "{}", kdc.read("kdc.log"));
    // The session outlives its tickets: ZooKeeper checks them only when a
    // connection logs in.
    tokio::time::sleep(Duration::from_secs(25)).await;
    let (_, status) = admin(&proxy, "/status").await;
    assert!(status.contains("\"connected\""), "{status}");
    // A ZooKeeper restart makes the proxy log in again with expired
    // tickets: new ones come from the keytab, and the latch is followed.
    zk.stop();
    zk.start_again();
    cluster.terminate(leader);
    let next = cluster.wait_for_leader(DEADLINE);
    wait_served_by(&proxy, &format!("livy-{}", next + 1), DEADLINE).await;
    assert!(
        kdc.logins(PROXY_PRINCIPAL) > logins,
        "no new login from the keytab:\n{}",
        kdc.read("kdc.log")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_proxy_started_while_the_kdc_is_down_waits_without_probing_and_routes_once_it_is_back() {
    let mut kdc = Kdc::start();
    let zk = kdc.zookeeper();
    let cluster = cluster(&zk, &kdc);
    let leader = cluster.wait_for_leader(DEADLINE);
    kdc.stop();
    // Not a configuration error: the proxy starts, says why it cannot log
    // in, and neither probes nor routes.
    let proxy = proxy(
        &zk,
        &cluster,
        &kdc,
        "2s",
        &kerberos(&kdc, PROXY_PRINCIPAL, "proxy.keytab", true),
    );
    never_routes(
        &proxy,
        &cluster,
        "Cannot contact any KDC",
        "kerberos-failed",
    )
    .await;
    kdc.start_again();
    wait_served_by(&proxy, &format!("livy-{}", leader + 1), DEADLINE).await;
}
