//! A secured ZooKeeper (issue 20, item 5): the real Debian ZooKeeper with
//! only a `secureClientPort` (PEM stores made here with rcgen, client
//! certificates required), or with SASL DIGEST-MD5 enforced through a JAAS
//! file. The Curator electors of the simulated Livy servers connect the way
//! Livy's do, through the ZooKeeper client's system properties
//! (`zookeeper.client.secure`, `zookeeper.ssl.*`,
//! `java.security.auth.login.config`); the proxy connects with
//! `zk-tls-*` / `zk-sasl-*`, follows the latch leader and a failover, and
//! with bad credentials says so and never routes.

mod common;

use std::process::{Command, Output};
use std::time::Duration;

use common::pki::Ca;
use common::{Proxy, SimCluster, ZkOptions, ZooKeeper, http_request, wait_served_by, wait_until};
use http::StatusCode;

const DEADLINE: Duration = Duration::from_secs(60);

/// Certificates for one test, as PEM files: a CA, ZooKeeper's server
/// certificate and a client certificate (both for 127.0.0.1), and the
/// key-then-chain PEM "keystores" ZooKeeper's Java side reads
/// (`ssl.keyStore.type=PEM`).
struct Pki {
    dir: tempfile::TempDir,
}

impl Pki {
    fn new() -> Pki {
        let dir = tempfile::tempdir().expect("temp dir");
        let ca = Ca::new("ZooKeeper test CA");
        std::fs::write(dir.path().join("ca.pem"), ca.pem()).unwrap();
        for name in ["server", "client"] {
            let (cert, key) = ca.issue(&["127.0.0.1", "localhost"], name);
            std::fs::write(dir.path().join(format!("{name}.pem")), &cert).unwrap();
            std::fs::write(dir.path().join(format!("{name}.key")), &key).unwrap();
            std::fs::write(
                dir.path().join(format!("{name}-keystore.pem")),
                format!("{key}{cert}"),
            )
            .unwrap();
        }
        // A CA that signed nothing here: the wrong trust anchor.
        std::fs::write(dir.path().join("other-ca.pem"), Ca::new("other CA").pem()).unwrap();
        Pki { dir }
    }

    fn path(&self, name: &str) -> String {
        self.dir.path().join(name).display().to_string()
    }

    /// zoo.cfg lines: TLS with PEM stores, client certificates required.
    fn server_cfg(&self) -> String {
        format!(
            "ssl.keyStore.location={}\nssl.keyStore.type=PEM\n\
             ssl.trustStore.location={}\nssl.trustStore.type=PEM\nssl.clientAuth=need\n",
            self.path("server-keystore.pem"),
            self.path("ca.pem"),
        )
    }

    /// The JVM flags a Livy server gets for this ensemble (ZooKeeper's
    /// client TLS properties, as Curator reads them).
    fn java_client_flags(&self) -> String {
        format!(
            "-Dzookeeper.client.secure=true \
             -Dzookeeper.clientCnxnSocket=org.apache.zookeeper.ClientCnxnSocketNetty \
             -Dzookeeper.ssl.keyStore.location={} -Dzookeeper.ssl.keyStore.type=PEM \
             -Dzookeeper.ssl.trustStore.location={} -Dzookeeper.ssl.trustStore.type=PEM",
            self.path("client-keystore.pem"),
            self.path("ca.pem"),
        )
    }
}

/// A DIGEST-MD5 setup: the server's and the clients' JAAS files and the
/// proxy's password files (right and wrong).
struct Digest {
    dir: tempfile::TempDir,
}

impl Digest {
    fn new() -> Digest {
        let dir = tempfile::tempdir().expect("temp dir");
        std::fs::write(
            dir.path().join("server.jaas"),
            "Server {\n  org.apache.zookeeper.server.auth.DigestLoginModule required\n  \
             user_livy=\"secret\";\n};\n",
        )
        .unwrap();
        std::fs::write(
            dir.path().join("client.jaas"),
            "Client {\n  org.apache.zookeeper.server.auth.DigestLoginModule required\n  \
             username=\"livy\"\n  password=\"secret\";\n};\n",
        )
        .unwrap();
        std::fs::write(dir.path().join("password"), "secret\n").unwrap();
        std::fs::write(dir.path().join("wrong-password"), "guessed\n").unwrap();
        Digest { dir }
    }

    fn path(&self, name: &str) -> String {
        self.dir.path().join(name).display().to_string()
    }

    /// A ZooKeeper that takes SASL and refuses every unauthenticated
    /// session (`enforce.auth.enabled`, ZooKeeper 3.7+).
    fn options(&self) -> ZkOptions {
        ZkOptions {
            cfg: "authProvider.1=org.apache.zookeeper.server.auth.SASLAuthenticationProvider\n\
                  enforce.auth.enabled=true\nenforce.auth.schemes=sasl\n"
                .to_string(),
            jvm: vec![format!(
                "-Djava.security.auth.login.config={}",
                self.path("server.jaas")
            )],
            tls_only: false,
        }
    }
}

/// Three simulated Livy servers whose latch JVMs get `java_flags`.
fn cluster(zk: &ZooKeeper, java_flags: String) -> SimCluster {
    let mut plan = SimCluster::plan(3);
    plan.env.push(("JAVA_TOOL_OPTIONS".to_string(), java_flags));
    plan.start(zk)
}

/// The proxy in front of `cluster`, reading `zk`'s latch; it holds a
/// request up to 30 s for a leader.
fn proxy(zk: &ZooKeeper, cluster: &SimCluster, more: &[String]) -> Proxy {
    proxy_holding(zk, cluster, "30s", more)
}

fn proxy_holding(zk: &ZooKeeper, cluster: &SimCluster, hold: &str, more: &[String]) -> Proxy {
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
    Proxy::start(&args)
}

/// The proxy follows the latch leader, then the next one after the
/// leader leaves cleanly.
async fn follows_leader_and_failover(proxy: &Proxy, cluster: &mut SimCluster) {
    let leader = cluster.wait_for_leader(DEADLINE);
    wait_served_by(proxy, &format!("livy-{}", leader + 1), DEADLINE).await;
    cluster.terminate(leader);
    let next = cluster.wait_for_leader(DEADLINE);
    assert_ne!(next, leader);
    wait_served_by(proxy, &format!("livy-{}", next + 1), DEADLINE).await;
}

/// GET on the admin port: status and body.
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

/// A proxy that cannot get into ZooKeeper: `/readyz` stays 503, a request
/// is never sent to any Livy server, and the log says `why`.
async fn never_routes(proxy: &Proxy, cluster: &SimCluster, why: &str) {
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
}

fn tls_zookeeper(pki: &Pki) -> ZooKeeper {
    ZooKeeper::start_with(ZkOptions {
        cfg: pki.server_cfg(),
        jvm: Vec::new(),
        tls_only: true,
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_tls_with_a_client_certificate_the_proxy_follows_the_leader_and_a_failover() {
    let pki = Pki::new();
    let zk = tls_zookeeper(&pki);
    let mut cluster = cluster(&zk, pki.java_client_flags());
    let proxy = proxy(
        &zk,
        &cluster,
        &[
            "--zk-tls-ca".into(),
            pki.path("ca.pem"),
            "--zk-tls-cert".into(),
            pki.path("client.pem"),
            "--zk-tls-key".into(),
            pki.path("client.key"),
        ],
    );
    follows_leader_and_failover(&proxy, &mut cluster).await;
    let (_, status) = admin(&proxy, "/status").await;
    assert!(status.contains("\"connected\""), "{status}");
    assert!(proxy.logs().contains("TLS with a client certificate"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_tls_a_wrong_ca_or_no_client_certificate_never_routes() {
    let pki = Pki::new();
    let zk = tls_zookeeper(&pki);
    let cluster = cluster(&zk, pki.java_client_flags());
    cluster.wait_for_leader(DEADLINE);
    let wrong_ca = proxy_holding(
        &zk,
        &cluster,
        "2s",
        &[
            "--zk-tls-ca".into(),
            pki.path("other-ca.pem"),
            "--zk-tls-cert".into(),
            pki.path("client.pem"),
            "--zk-tls-key".into(),
            pki.path("client.key"),
        ],
    );
    never_routes(&wrong_ca, &cluster, "TLS handshake with ZooKeeper").await;
    assert!(
        wrong_ca.logs().contains("UnknownIssuer"),
        "{}",
        wrong_ca.logs()
    );
    let (_, status) = admin(&wrong_ca, "/status").await;
    assert!(status.contains("tls-failed"), "{status}");
    let no_cert = proxy_holding(
        &zk,
        &cluster,
        "2s",
        &["--zk-tls-ca".into(), pki.path("ca.pem")],
    );
    never_routes(&no_cert, &cluster, "TLS handshake with ZooKeeper").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_digest_the_right_password_follows_the_leader_and_a_wrong_one_never_routes_until_fixed()
 {
    let digest = Digest::new();
    let zk = ZooKeeper::start_with(digest.options());
    let mut cluster = cluster(
        &zk,
        format!(
            "-Djava.security.auth.login.config={}",
            digest.path("client.jaas")
        ),
    );
    let sasl = |password: &str| {
        vec![
            "--zk-sasl-user".to_string(),
            "livy".into(),
            "--zk-sasl-password-file".into(),
            digest.path(password),
        ]
    };
    let wrong = proxy_holding(&zk, &cluster, "2s", &sasl("wrong-password"));
    let right = proxy(&zk, &cluster, &sasl("password"));
    follows_leader_and_failover(&right, &mut cluster).await;
    never_routes(&wrong, &cluster, "authentication failed").await;
    let (_, status) = admin(&wrong, "/status").await;
    assert!(status.contains("auth-failed"), "{status}");
    // Without credentials at all, the enforcing server lets nothing through.
    let anonymous = proxy_holding(&zk, &cluster, "2s", &[]);
    never_routes(&anonymous, &cluster, "authentication failed").await;
    assert!(
        anonymous.logs().contains("requires authentication"),
        "{}",
        anonymous.logs()
    );
    // The password file is read again for every new session: fixing it is
    // enough, no restart.
    std::fs::write(digest.path("wrong-password"), "secret\n").unwrap();
    let leader = cluster.wait_for_leader(DEADLINE);
    wait_served_by(&wrong, &format!("livy-{}", leader + 1), DEADLINE).await;
}

fn run(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_livy-proxy"))
        .args(args)
        .env_clear()
        .output()
        .expect("the binary runs")
}

/// Exit 2 and one line on stderr naming `key`.
fn assert_config_error(out: &Output, key: &str) {
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains(&format!("`{key}`")), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "one line: {err}");
}

#[test]
fn unpaired_or_unreadable_security_keys_are_config_errors_naming_them() {
    let pki = Pki::new();
    let dir = tempfile::tempdir().unwrap();
    let empty = dir.path().join("empty");
    std::fs::write(&empty, "").unwrap();
    let empty = empty.display().to_string();
    let base = ["--zookeeper", "127.0.0.1:1", "--admin-listen", "off"];
    let with = |more: &[&str]| {
        let mut a = base.to_vec();
        a.extend_from_slice(more);
        run(&a)
    };
    let (ca, cert, key) = (
        pki.path("ca.pem"),
        pki.path("client.pem"),
        pki.path("client.key"),
    );
    assert_config_error(
        &with(&["--zk-tls-cert", &cert, "--zk-tls-ca", &ca]),
        "zk-tls-cert",
    );
    assert_config_error(
        &with(&["--zk-tls-key", &key, "--zk-tls-ca", &ca]),
        "zk-tls-key",
    );
    assert_config_error(
        &with(&["--zk-tls-cert", &cert, "--zk-tls-key", &key]),
        "zk-tls-cert",
    );
    assert_config_error(&with(&["--zk-tls-ca", &empty]), "zk-tls-ca");
    assert_config_error(&with(&["--zk-tls-ca", "/nonexistent.pem"]), "zk-tls-ca");
    assert_config_error(
        &with(&[
            "--zk-tls-ca",
            &ca,
            "--zk-tls-cert",
            &cert,
            "--zk-tls-key",
            &empty,
        ]),
        "zk-tls-key",
    );
    // A key that is not the certificate's.
    assert_config_error(
        &with(&[
            "--zk-tls-ca",
            &ca,
            "--zk-tls-cert",
            &cert,
            "--zk-tls-key",
            &pki.path("server.key"),
        ]),
        "zk-tls-key",
    );
    assert_config_error(&with(&["--zk-sasl-user", "livy"]), "zk-sasl-user");
    assert_config_error(
        &with(&["--zk-sasl-password-file", &empty]),
        "zk-sasl-password-file",
    );
    assert_config_error(
        &with(&["--zk-sasl-user", "livy", "--zk-sasl-password-file", &empty]),
        "zk-sasl-password-file",
    );
    // No flag takes the password itself.
    assert_eq!(
        with(&["--zk-sasl-password", "secret"]).status.code(),
        Some(2)
    );
    // Without ZooKeeper the keys would do nothing: refused, not ignored.
    assert_config_error(
        &run(&[
            "--node",
            "127.0.0.1:1",
            "--admin-listen",
            "off",
            "--zk-tls-ca",
            &ca,
        ]),
        "zk-tls-ca",
    );
}
