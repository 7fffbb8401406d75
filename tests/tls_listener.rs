//! TLS on the listeners, through the binary: certificate reload (SIGHUP, a
//! Kubernetes-style `..data` symlink swap, a bad new file), mutual TLS and
//! the client identity, handshake bounds, SNI and Host never choosing an
//! upstream, the admin and JDBC listeners over TLS. Certificates are made
//! here with rcgen; clients are curl, `openssl s_client` and rustls.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use common::pki::Ca;
use common::{Proxy, SimCluster, free_port, metric, wait_until};
use rustls_pki_types::pem::PemObject;

const DEADLINE: Duration = Duration::from_secs(20);

fn write(dir: &Path, name: &str, text: &str) -> String {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p.display().to_string()
}

/// The serial of the certificate `openssl s_client` is served on `addr`,
/// in hex as `openssl x509 -serial` prints it (`02`).
fn served_serial(addr: SocketAddr, ca: &str) -> Option<String> {
    let out = Command::new("openssl")
        .args(["s_client", "-connect", &addr.to_string()])
        .args(["-servername", "localhost", "-CAfile", ca])
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
        .ok()?;
    let mut x509 = Command::new("openssl")
        .args(["x509", "-noout", "-serial"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .ok()?;
    x509.stdin.take()?.write_all(&out.stdout).ok()?;
    let out = x509.wait_with_output().ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    text.trim().strip_prefix("serial=").map(str::to_string)
}

/// curl over TLS with the test CA and `more`; its `%{http_code}` (`000`
/// when the handshake failed) and stderr.
fn curl(ca: &str, url: &str, more: &[&str]) -> (String, String) {
    let out = Command::new("curl")
        .args(["-sS", "--max-time", "30", "--cacert", ca])
        .args(["-o", "/dev/null", "-w", "%{http_code}"])
        .args(more)
        .arg(url)
        .output()
        .expect("curl runs");
    (
        String::from_utf8_lossy(&out.stdout).to_string(),
        String::from_utf8_lossy(&out.stderr).to_string(),
    )
}

/// A plain GET of `url` with curl; the body.
fn curl_body(url: &str) -> String {
    let out = Command::new("curl")
        .args(["-sS", "--max-time", "10", url])
        .output()
        .expect("curl runs");
    String::from_utf8_lossy(&out.stdout).to_string()
}

/// A rustls client trusting `ca`, with a client certificate if given.
fn client_config(ca: &str, cert: Option<(&str, &str)>) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(rustls_pki_types::CertificateDer::from_pem_file(ca).unwrap())
        .unwrap();
    let builder = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots);
    let config = match cert {
        None => builder.with_no_client_auth(),
        Some((c, k)) => builder
            .with_client_auth_cert(
                rustls_pki_types::CertificateDer::pem_file_iter(c)
                    .unwrap()
                    .map(|c| c.unwrap())
                    .collect(),
                rustls_pki_types::PrivateKeyDer::from_pem_file(k).unwrap(),
            )
            .unwrap(),
    };
    Arc::new(config)
}

/// A blocking TLS connection.
struct TlsConn(rustls::StreamOwned<rustls::ClientConnection, TcpStream>);

impl TlsConn {
    fn open(addr: SocketAddr, config: Arc<rustls::ClientConfig>) -> std::io::Result<TlsConn> {
        let tcp = TcpStream::connect(addr)?;
        tcp.set_read_timeout(Some(Duration::from_secs(30)))?;
        let conn = rustls::ClientConnection::new(config, "localhost".try_into().unwrap())
            .map_err(std::io::Error::other)?;
        let mut s = rustls::StreamOwned::new(conn, tcp);
        // Drive the handshake to its end.
        while s.conn.is_handshaking() {
            s.conn.complete_io(&mut s.sock)?;
        }
        Ok(TlsConn(s))
    }

    /// The serial of the server's certificate on this connection.
    fn serial(&self) -> String {
        let der = &self.0.conn.peer_certificates().unwrap()[0];
        let (_, x) = x509_parser::parse_x509_certificate(der.as_ref()).unwrap();
        x.raw_serial_as_string().replace(':', "").to_uppercase()
    }

    /// GET `path` on this keep-alive connection; the status.
    fn get(&mut self, path: &str) -> std::io::Result<u16> {
        write!(
            self.0,
            "GET {path} HTTP/1.1\r\nHost: localhost\r\nUser-Agent: curl/rustls\r\n\r\n"
        )?;
        self.0.flush()?;
        let mut head = Vec::new();
        let mut byte = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            if self.0.read(&mut byte)? == 0 {
                return Err(std::io::ErrorKind::UnexpectedEof.into());
            }
            head.push(byte[0]);
        }
        let head = String::from_utf8_lossy(&head).to_string();
        let length: usize = head
            .lines()
            .find_map(|l| {
                let (k, v) = l.split_once(':')?;
                k.eq_ignore_ascii_case("content-length")
                    .then(|| v.trim().parse().ok())?
            })
            .unwrap_or(0);
        let mut body = vec![0u8; length];
        self.0.read_exact(&mut body)?;
        head.split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| std::io::Error::other(head.clone()))
    }
}

/// A Kubernetes Secret volume: `tls.crt` and `tls.key` are symlinks to
/// `..data/tls.crt` and `..data/tls.key`, `..data` a symlink to a
/// timestamped directory; an update writes a new directory, points
/// `..data_tmp` at it and renames that over `..data` (atomic), then removes
/// the old directory: exactly what the kubelet's AtomicWriter does.
struct SecretVolume {
    dir: PathBuf,
    version: u32,
}

impl SecretVolume {
    fn new(dir: &Path, cert: &str, key: &str) -> SecretVolume {
        SecretVolume::with_files(dir, "secret", &[("tls.crt", cert), ("tls.key", key)])
    }

    /// A volume in `dir/name` holding `files` (name, contents).
    fn with_files(dir: &Path, name: &str, files: &[(&str, &str)]) -> SecretVolume {
        let dir = dir.join(name);
        std::fs::create_dir(&dir).unwrap();
        let mut v = SecretVolume { dir, version: 0 };
        v.update_files(files);
        for (f, _) in files {
            std::os::unix::fs::symlink(format!("..data/{f}"), v.dir.join(f)).unwrap();
        }
        v
    }

    fn update(&mut self, cert: &str, key: &str) {
        self.update_files(&[("tls.crt", cert), ("tls.key", key)]);
    }

    fn update_files(&mut self, files: &[(&str, &str)]) {
        let old = format!("..2026_12_01_00_00_0{}.000000001", self.version);
        self.version += 1;
        let new = format!("..2026_12_01_00_00_0{}.000000001", self.version);
        std::fs::create_dir(self.dir.join(&new)).unwrap();
        for (f, text) in files {
            std::fs::write(self.dir.join(&new).join(f), text).unwrap();
        }
        std::os::unix::fs::symlink(&new, self.dir.join("..data_tmp")).unwrap();
        std::fs::rename(self.dir.join("..data_tmp"), self.dir.join("..data")).unwrap();
        let _ = std::fs::remove_dir_all(self.dir.join(old));
    }

    fn path(&self, file: &str) -> String {
        self.dir.join(file).display().to_string()
    }

    fn cert(&self) -> String {
        self.dir.join("tls.crt").display().to_string()
    }

    fn key(&self) -> String {
        self.dir.join("tls.key").display().to_string()
    }
}

fn wait_ready(proxy: &Proxy, ca: &str, url: &str) {
    assert!(
        wait_until(DEADLINE, || curl(ca, url, &[]).0 == "200"),
        "no 200 over TLS:\n{}",
        proxy.logs()
    );
}

/// A proxy whose HTTP listener serves certificate 1 of a fresh CA from a
/// Secret volume (to rotate), in front of one static livy-sim.
struct OnSecret {
    _tmp: tempfile::TempDir,
    ca: Ca,
    ca_file: String,
    secret: SecretVolume,
    _sim: SimCluster,
    proxy: Proxy,
}

impl OnSecret {
    fn start(ca_name: &str) -> OnSecret {
        let tmp = tempfile::tempdir().unwrap();
        let ca = Ca::new(ca_name);
        let ca_file = write(tmp.path(), "ca.pem", &ca.pem());
        let (c1, k1) = ca.server(1);
        let secret = SecretVolume::new(tmp.path(), &c1, &k1);
        let sim = SimCluster::plan(1).start_static(0);
        let proxy = Proxy::start(&[
            "--node",
            &sim.node_arg(0),
            "--tls-cert",
            &secret.cert(),
            "--tls-key",
            &secret.key(),
        ]);
        let url = format!("https://localhost:{}/version", proxy.addr().port());
        wait_ready(&proxy, &ca_file, &url);
        OnSecret {
            _tmp: tmp,
            ca,
            ca_file,
            secret,
            _sim: sim,
            proxy,
        }
    }
}

#[test]
fn a_rotated_secret_and_sighup_renew_the_certificate_without_dropping_connections() {
    let OnSecret {
        ca,
        ca_file,
        mut secret,
        proxy,
        // Bound (not `..`), so that they live to the test's end.
        _tmp,
        _sim,
    } = OnSecret::start("rotation CA");
    assert_eq!(served_serial(proxy.addr(), &ca_file).as_deref(), Some("01"));
    let mut kept = TlsConn::open(proxy.addr(), client_config(&ca_file, None)).unwrap();
    assert_eq!(kept.get("/version").unwrap(), 200);
    assert_eq!(kept.serial(), "01");

    // The kubelet swaps `..data`: picked up from the file change alone.
    let (c2, k2) = ca.server(2);
    secret.update(&c2, &k2);
    assert!(
        wait_until(DEADLINE, || served_serial(proxy.addr(), &ca_file)
            .as_deref()
            == Some("02")),
        "the new certificate is not served:\n{}",
        proxy.logs()
    );
    // The connection made before keeps working, on its own certificate.
    assert_eq!(kept.get("/version").unwrap(), 200);
    assert_eq!(kept.serial(), "01");

    // SIGHUP reads the files again too.
    let (c3, k3) = ca.server(3);
    secret.update(&c3, &k3);
    proxy.signal(libc::SIGHUP);
    assert!(
        wait_until(DEADLINE, || served_serial(proxy.addr(), &ca_file)
            .as_deref()
            == Some("03")),
        "{}",
        proxy.logs()
    );
    assert!(
        wait_until(DEADLINE, || proxy.logs().lines().any(|l| l
            .contains("TLS certificate and key reloaded")
            && l.contains("SIGHUP"))),
        "{}",
        proxy.logs()
    );
    assert_eq!(kept.get("/version").unwrap(), 200);
    let metrics = curl_body(&format!("{}/metrics", proxy.admin_url()));
    let ok = metric(
        &metrics,
        "livy_proxy_tls_reloads_total{service=\"default\",listener=\"http\",result=\"success\"}",
    )
    .unwrap_or(0.0);
    assert!(ok >= 2.0, "{metrics}");
    assert_eq!(
        metric(
            &metrics,
            "livy_proxy_tls_reloads_total{service=\"default\",listener=\"http\",result=\"failure\"}"
        ),
        Some(0.0),
        "{metrics}"
    );
}

#[test]
fn a_bad_new_key_keeps_the_old_certificate_and_counts_a_failure() {
    let tmp = tempfile::tempdir().unwrap();
    let ca = Ca::new("bad-reload CA");
    let ca_file = write(tmp.path(), "ca.pem", &ca.pem());
    let (c1, k1) = ca.server(1);
    let mut secret = SecretVolume::new(tmp.path(), &c1, &k1);
    let sim = SimCluster::plan(1).start_static(0);
    let proxy = Proxy::start(&[
        "--node",
        &sim.node_arg(0),
        "--tls-cert",
        &secret.cert(),
        "--tls-key",
        &secret.key(),
    ]);
    let url = format!("https://localhost:{}/version", proxy.addr().port());
    wait_ready(&proxy, &ca_file, &url);
    let metrics = curl_body(&format!("{}/metrics", proxy.admin_url()));
    // The expiry is the certificate's notAfter, Unix seconds (rcgen's
    // default: 4096-01-01).
    assert_eq!(
        metric(
            &metrics,
            "livy_proxy_tls_certificate_expiry_seconds{service=\"default\",listener=\"http\"}"
        ),
        Some(67_090_118_400.0),
        "{metrics}"
    );

    // A new certificate with a key that is not its own.
    let (c2, _) = ca.server(2);
    let (_, other_key) = ca.server(3);
    secret.update(&c2, &other_key);
    let failure =
        "livy_proxy_tls_reloads_total{service=\"default\",listener=\"http\",result=\"failure\"}";
    assert!(
        wait_until(DEADLINE, || metric(
            &curl_body(&format!("{}/metrics", proxy.admin_url())),
            failure
        ) == Some(1.0)),
        "{}",
        proxy.logs()
    );
    assert!(
        proxy.logs().contains("TLS reload failed"),
        "{}",
        proxy.logs()
    );
    assert!(proxy.logs().contains("tls-key"), "{}", proxy.logs());
    assert_eq!(served_serial(proxy.addr(), &ca_file).as_deref(), Some("01"));
    assert_eq!(curl(&ca_file, &url, &[]).0, "200");
    // SIGHUP with the same bad files: another failure, the same certificate.
    proxy.signal(libc::SIGHUP);
    assert!(
        wait_until(DEADLINE, || metric(
            &curl_body(&format!("{}/metrics", proxy.admin_url())),
            failure
        ) == Some(2.0)),
        "{}",
        proxy.logs()
    );
    assert_eq!(served_serial(proxy.addr(), &ca_file).as_deref(), Some("01"));
}

/// A proxy in front of one sim node, verifying client certificates.
struct MtlsSetup {
    _tmp: tempfile::TempDir,
    dir: PathBuf,
    ca: Ca,
    ca_file: String,
    sim: SimCluster,
    proxy: Proxy,
}

fn mtls(more: &[&str]) -> MtlsSetup {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().to_path_buf();
    let ca = Ca::new("mTLS CA");
    let ca_file = write(&dir, "ca.pem", &ca.pem());
    let (c, k) = ca.server(1);
    let cert = write(&dir, "cert.pem", &c);
    let key = write(&dir, "key.pem", &k);
    let sim = SimCluster::plan(1).start_static(0);
    let mut args: Vec<String> = [
        "--node",
        &sim.node_arg(0),
        "--tls-cert",
        &cert,
        "--tls-key",
        &key,
        "--tls-client-ca",
        &ca_file,
        "--tls-client-identity-header",
        "X-Client-Cert",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    args.extend(more.iter().map(|s| s.to_string()));
    let proxy = Proxy::start(&args);
    MtlsSetup {
        _tmp: tmp,
        dir,
        ca,
        ca_file,
        sim,
        proxy,
    }
}

impl MtlsSetup {
    fn url(&self) -> String {
        format!("https://localhost:{}/version", self.proxy.addr().port())
    }

    /// Writes a client certificate; the curl flags that send it.
    fn client(&self, name: &str, from: &Ca, expired: bool) -> Vec<String> {
        let (c, k) = from.client(name, expired);
        vec![
            "--cert".into(),
            write(&self.dir, &format!("{name}.crt"), &c),
            "--key".into(),
            write(&self.dir, &format!("{name}.key"), &k),
        ]
    }

    fn curl(&self, flags: &[String]) -> (String, String) {
        let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
        curl(&self.ca_file, &self.url(), &flags)
    }
}

#[test]
fn required_client_certificates_are_verified_and_the_identity_reaches_livy_and_the_log() {
    let s = mtls(&[]);
    let alice = s.client("alice", &s.ca, false);
    assert!(
        wait_until(DEADLINE, || s.curl(&alice).0 == "200"),
        "{}",
        s.proxy.logs()
    );
    // No certificate, one from another CA, an expired one: no handshake.
    let stranger = s.client("mallory", &Ca::new("other CA"), false);
    let expired = s.client("old", &s.ca, true);
    for (what, flags) in [
        ("none", vec![]),
        ("wrong CA", stranger),
        ("expired", expired),
    ] {
        let (code, err) = s.curl(&flags);
        assert_eq!(code, "000", "{what}: {err}");
    }
    assert!(
        wait_until(DEADLINE, || s.proxy.logs().contains("TLS handshake failed")),
        "{}",
        s.proxy.logs()
    );

    // A forged identity header is replaced by the verified one.
    s.sim.clear_requests(0);
    let mut forged = alice.clone();
    forged.extend(["-H".into(), "X-Client-Cert: Subject=\"CN=admin\"".into()]);
    assert_eq!(s.curl(&forged).0, "200");
    let seen = s.sim.curl_requests(0);
    assert_eq!(seen.len(), 1, "{seen:?}");
    assert_eq!(
        seen[0]["headers"]["x-client-cert"],
        "Subject=\"CN=alice\";DNS=alice.example;URI=spiffe://test/alice",
        "{}",
        seen[0]
    );
    // The access log names the client certificate.
    assert!(
        wait_until(DEADLINE, || s.proxy.logs().lines().any(|l| l
            .contains("client_cert=\"CN=alice\"")
            && l.contains(
                "client_san=\"DNS:alice.example,URI:spiffe://test/alice\""
            ))),
        "{}",
        s.proxy.logs()
    );
}

#[test]
fn optional_client_certificates_admit_clients_without_one_but_strip_a_forged_identity() {
    let s = mtls(&["--tls-client-auth", "optional"]);
    assert!(
        wait_until(DEADLINE, || s.curl(&[]).0 == "200"),
        "{}",
        s.proxy.logs()
    );
    s.sim.clear_requests(0);
    // Without a certificate: served, and the forged header never arrives.
    let forged = vec![
        "-H".to_string(),
        "X-Client-Cert: Subject=\"CN=admin\"".to_string(),
    ];
    assert_eq!(s.curl(&forged).0, "200");
    // With one: its identity.
    let bob = s.client("bob", &s.ca, false);
    assert_eq!(s.curl(&bob).0, "200");
    // A certificate the CA did not sign is still refused.
    let stranger = s.client("eve", &Ca::new("other CA"), false);
    assert_eq!(s.curl(&stranger).0, "000");
    let seen = s.sim.curl_requests(0);
    assert_eq!(seen.len(), 2, "{seen:?}");
    assert!(
        seen[0]["headers"].get("x-client-cert").is_none(),
        "{}",
        seen[0]
    );
    assert_eq!(
        seen[1]["headers"]["x-client-cert"],
        "Subject=\"CN=bob\";DNS=bob.example;URI=spiffe://test/bob"
    );
}

#[test]
fn the_identity_header_is_stripped_on_a_plain_listener_too() {
    let sim = SimCluster::plan(1).start_static(0);
    let proxy = Proxy::start(&[
        "--node",
        &sim.node_arg(0),
        "--tls-client-identity-header",
        "X-Client-Cert",
    ]);
    let url = format!("{}/version", proxy.url());
    assert!(
        wait_until(DEADLINE, || curl_body(&url).contains("version")),
        "{}",
        proxy.logs()
    );
    sim.clear_requests(0);
    let out = Command::new("curl")
        .args(["-sS", "-H", "X-Client-Cert: Subject=\"CN=admin\"", &url])
        .output()
        .unwrap();
    assert!(out.status.success());
    let seen = sim.curl_requests(0);
    assert_eq!(seen.len(), 1);
    assert!(
        seen[0]["headers"].get("x-client-cert").is_none(),
        "{}",
        seen[0]
    );
}

/// A client's configuration with a session store of its own.
fn with_own_sessions(config: &Arc<rustls::ClientConfig>) -> Arc<rustls::ClientConfig> {
    with_resumption(config, rustls::client::Resumption::in_memory_sessions(8))
}

/// `config` resuming sessions through `resumption` instead.
fn with_resumption(
    config: &Arc<rustls::ClientConfig>,
    resumption: rustls::client::Resumption,
) -> Arc<rustls::ClientConfig> {
    let mut c = (**config).clone();
    c.resumption = resumption;
    Arc::new(c)
}

/// Whether a new connection with `config` resumed a session; one request
/// on it, so that the tickets the server sends after the handshake are read
/// into `config`'s store.
fn resumed(addr: SocketAddr, config: &Arc<rustls::ClientConfig>) -> bool {
    let mut c = TlsConn::open(addr, config.clone()).unwrap();
    assert_eq!(c.get("/version").unwrap(), 200);
    c.0.conn.handshake_kind() == Some(rustls::HandshakeKind::Resumed)
}

/// A client session store that counts the TLS 1.3 tickets it is given.
#[derive(Debug)]
struct CountingStore {
    inner: rustls::client::ClientSessionMemoryCache,
    tickets: std::sync::atomic::AtomicUsize,
}

impl CountingStore {
    fn new() -> CountingStore {
        CountingStore {
            inner: rustls::client::ClientSessionMemoryCache::new(8),
            tickets: Default::default(),
        }
    }

    fn tickets(&self) -> usize {
        self.tickets.load(std::sync::atomic::Ordering::SeqCst)
    }
}

impl rustls::client::ClientSessionStore for CountingStore {
    fn set_kx_hint(&self, name: rustls::pki_types::ServerName<'static>, group: rustls::NamedGroup) {
        self.inner.set_kx_hint(name, group)
    }
    fn kx_hint(&self, name: &rustls::pki_types::ServerName<'_>) -> Option<rustls::NamedGroup> {
        self.inner.kx_hint(name)
    }
    fn set_tls12_session(
        &self,
        name: rustls::pki_types::ServerName<'static>,
        value: rustls::client::Tls12ClientSessionValue,
    ) {
        self.inner.set_tls12_session(name, value)
    }
    fn tls12_session(
        &self,
        name: &rustls::pki_types::ServerName<'_>,
    ) -> Option<rustls::client::Tls12ClientSessionValue> {
        self.inner.tls12_session(name)
    }
    fn remove_tls12_session(&self, name: &rustls::pki_types::ServerName<'static>) {
        self.inner.remove_tls12_session(name)
    }
    fn insert_tls13_ticket(
        &self,
        name: rustls::pki_types::ServerName<'static>,
        value: rustls::client::Tls13ClientSessionValue,
    ) {
        self.tickets
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        self.inner.insert_tls13_ticket(name, value)
    }
    fn take_tls13_ticket(
        &self,
        name: &rustls::pki_types::ServerName<'static>,
    ) -> Option<rustls::client::Tls13ClientSessionValue> {
        self.inner.take_tls13_ticket(name)
    }
}

#[test]
fn a_tls13_handshake_full_or_resumed_gives_the_client_one_ticket() {
    let s = OnSecret::start("ticket count CA");
    let store = Arc::new(CountingStore::new());
    let config = with_resumption(
        &client_config(&s.ca_file, None),
        rustls::client::Resumption::store(store.clone()),
    );
    assert!(
        !resumed(s.proxy.addr(), &config),
        "a first connection cannot resume"
    );
    assert_eq!(store.tickets(), 1, "tickets after a full handshake");
    assert!(resumed(s.proxy.addr(), &config), "{}", s.proxy.logs());
    assert_eq!(store.tickets(), 2, "tickets after a resumed handshake too");
}

#[test]
fn sessions_resume_from_stateless_tickets_however_many_clients_came_since_but_not_across_a_reload()
{
    let mut s = OnSecret::start("resumption CA");
    let proxy = &s.proxy;
    let base = client_config(&s.ca_file, None);
    let first = with_own_sessions(&base);
    assert!(
        !resumed(proxy.addr(), &first),
        "a first connection cannot resume"
    );
    assert!(resumed(proxy.addr(), &first), "{}", proxy.logs());
    // 300 other clients, each given a TLS 1.3 ticket: more sessions than a
    // 256-entry server-side cache holds.
    for _ in 0..300 {
        assert!(!resumed(proxy.addr(), &with_own_sessions(&base)));
    }
    assert!(
        resumed(proxy.addr(), &first),
        "the first client's ticket was forgotten: {}",
        proxy.logs()
    );
    // A new certificate, and so perhaps a new client CA: what was agreed
    // before it is not resumed.
    let (c2, k2) = s.ca.server(2);
    s.secret.update(&c2, &k2);
    assert!(
        wait_until(DEADLINE, || served_serial(proxy.addr(), &s.ca_file)
            .as_deref()
            == Some("02")),
        "{}",
        proxy.logs()
    );
    assert!(!resumed(proxy.addr(), &first), "resumed across a reload");
    assert!(resumed(proxy.addr(), &first), "{}", proxy.logs());
}

/// One Livy node behind a proxy with a TLS listener (`tls-listen`) beside
/// the plain one, `more` flags added, and the TLS listener serving.
struct TlsBeside {
    _tmp: tempfile::TempDir,
    ca_file: String,
    sim: SimCluster,
    proxy: Proxy,
    tls_port: u16,
}

impl TlsBeside {
    fn start(more: &[&str]) -> TlsBeside {
        let tmp = tempfile::tempdir().unwrap();
        let ca = Ca::new("side-by-side CA");
        let ca_file = write(tmp.path(), "ca.pem", &ca.pem());
        let (c, k) = ca.server(1);
        let sim = SimCluster::plan(1).start_static(0);
        let tls_port = free_port();
        let mut args = vec![
            "--node".to_string(),
            sim.node_arg(0),
            "--tls-cert".into(),
            write(tmp.path(), "c.pem", &c),
            "--tls-key".into(),
            write(tmp.path(), "k.pem", &k),
            "--tls-listen".into(),
            format!("127.0.0.1:{tls_port}"),
        ];
        args.extend(more.iter().map(|a| a.to_string()));
        let proxy = Proxy::start(&args);
        wait_ready(
            &proxy,
            &ca_file,
            &format!("https://localhost:{tls_port}/version"),
        );
        TlsBeside {
            _tmp: tmp,
            ca_file,
            sim,
            proxy,
            tls_port,
        }
    }
}

#[test]
fn tls_listen_serves_tls_beside_the_plain_listener() {
    let t = TlsBeside::start(&[]);
    assert!(curl_body(&format!("{}/version", t.proxy.url())).contains("version"));
}

#[test]
fn a_tls_client_that_stops_reading_is_cut_off_and_its_livy_connection_freed() {
    let t = TlsBeside::start(&[
        "--client-send-timeout",
        "1s",
        // One connection to Livy: the stalled answer holds it until the
        // proxy lets it go.
        "--max-upstream-connections",
        "1",
    ]);
    let (ca_file, sim, tls_port) = (&t.ca_file, &t.sim, t.tls_port);
    let https = format!("https://localhost:{tls_port}");
    let (status, err) = curl(
        ca_file,
        &format!("{https}/sessions"),
        &[
            "-X",
            "POST",
            "-H",
            "Content-Type: application/json",
            "-d",
            "{}",
        ],
    );
    assert_eq!(status, "201", "{err}");
    // A session log of about 60 MB, more than every socket buffer on the
    // way, asked for over TLS and then never read.
    let addr: SocketAddr = format!("127.0.0.1:{tls_port}").parse().unwrap();
    let mut stalled = TlsConn::open(addr, client_config(ca_file, None)).unwrap();
    write!(
        stalled.0,
        "GET /sessions/1/log?from=0&size=1000000 HTTP/1.1\r\nHost: localhost\r\n\r\n"
    )
    .unwrap();
    stalled.0.flush().unwrap();
    assert!(
        wait_until(Duration::from_secs(20), || sim
            .requests(0)
            .iter()
            .any(|r| r["path"].as_str().unwrap_or("").ends_with("/log"))),
        "the log request reached Livy"
    );
    // Another client is served once the stalled one is cut off; without
    // the timeout it would wait for the one connection (upstream-timeout).
    let (status, err) = curl(ca_file, &format!("{https}/sessions"), &[]);
    assert_eq!(status, "200", "{err}");
    // The stalled connection was closed, short of the whole answer.
    let mut got = 0usize;
    let mut buf = vec![0u8; 64 * 1024];
    let closed = loop {
        match stalled.0.read(&mut buf) {
            Ok(0) => break true,
            Ok(n) => got += n,
            // A reset, or rustls seeing the TCP stream end without
            // close_notify: closed either way. A read timeout is not.
            Err(e) => {
                break !matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                );
            }
        }
    };
    assert!(closed, "the stalled connection is still open");
    assert!(got < 50_000_000, "the whole answer arrived: {got} bytes");
}

#[test]
fn handshakes_are_bounded_in_time_and_number() {
    let tmp = tempfile::tempdir().unwrap();
    let ca = Ca::new("handshake CA");
    let ca_file = write(tmp.path(), "ca.pem", &ca.pem());
    let (c, k) = ca.server(1);
    let sim = SimCluster::plan(1).start_static(0);
    let proxy = Proxy::start(&[
        "--node",
        &sim.node_arg(0),
        "--tls-cert",
        &write(tmp.path(), "c.pem", &c),
        "--tls-key",
        &write(tmp.path(), "k.pem", &k),
        "--tls-handshake-timeout",
        "2s",
        "--max-tls-handshakes",
        "1",
    ]);
    let url = format!("https://localhost:{}/version", proxy.addr().port());
    wait_ready(&proxy, &ca_file, &url);
    // A client that connects and says nothing holds the only handshake;
    // the next one waits (accepting waits), then is served once the
    // silent one's handshake timed out.
    let mut silent = TcpStream::connect(proxy.addr()).unwrap();
    silent
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(curl(&ca_file, &url, &[]).0, "200", "{}", proxy.logs());
    let mut buf = [0u8; 16];
    assert!(
        matches!(silent.read(&mut buf), Ok(0) | Err(_)),
        "the silent client is closed"
    );
    let logs = proxy.logs();
    assert!(logs.contains("max-tls-handshakes reached"), "{logs}");
    assert!(logs.contains("TLS handshake timed out"), "{logs}");
}

/// The admin listener's handshakes are not counted against the traffic
/// listeners' `max-tls-handshakes`: connections holding every handshake on
/// the HTTPS port must not keep the kubelet's probes out (a liveness
/// probe timing out restarts the pod).
#[test]
fn admin_handshakes_do_not_wait_behind_the_traffic_listeners() {
    let tmp = tempfile::tempdir().unwrap();
    let ca = Ca::new("admin handshake CA");
    let ca_file = write(tmp.path(), "ca.pem", &ca.pem());
    let (c, k) = ca.server(1);
    let (c, k) = (
        write(tmp.path(), "c.pem", &c),
        write(tmp.path(), "k.pem", &k),
    );
    let sim = SimCluster::plan(1).start_static(0);
    let proxy = Proxy::start(&[
        "--node",
        &sim.node_arg(0),
        "--tls-cert",
        &c,
        "--tls-key",
        &k,
        "--admin-tls-cert",
        &c,
        "--admin-tls-key",
        &k,
        "--tls-handshake-timeout",
        "300s",
        "--max-tls-handshakes",
        "1",
    ]);
    let url = format!("https://127.0.0.1:{}/version", proxy.addr().port());
    wait_ready(&proxy, &ca_file, &url);
    // Says nothing: it holds the only traffic handshake for 300 s.
    let mut silent = TcpStream::connect(proxy.addr()).unwrap();
    std::thread::sleep(Duration::from_millis(300));
    let admin = proxy.admin_url().replace("http://", "https://");
    assert_eq!(
        curl(&ca_file, &format!("{admin}/healthz"), &[]),
        ("200".to_string(), String::new()),
        "{}",
        proxy.logs()
    );
    silent
        .set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    let mut buf = [0u8; 16];
    assert!(
        matches!(silent.read(&mut buf), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock || e.kind() == std::io::ErrorKind::TimedOut),
        "the silent handshake still holds its slot: admin did not wait for it to time out"
    );
}

#[test]
fn sni_and_host_naming_another_livy_node_still_reach_the_leader() {
    let tmp = tempfile::tempdir().unwrap();
    let ca = Ca::new("SNI CA");
    let ca_file = write(tmp.path(), "ca.pem", &ca.pem());
    let (c, k) = ca.server(1);
    let plan = SimCluster::plan(2);
    let other = plan.node_arg(1);
    let other_host = other.split("//").nth(1).unwrap().to_string();
    let sim = plan.start_static(0);
    let proxy = Proxy::start(&[
        "--node",
        &sim.node_arg(0),
        "--node",
        &other,
        "--tls-cert",
        &write(tmp.path(), "c.pem", &c),
        "--tls-key",
        &write(tmp.path(), "k.pem", &k),
    ]);
    let port = proxy.addr().port();
    wait_ready(
        &proxy,
        &ca_file,
        &format!("https://localhost:{port}/version"),
    );
    sim.clear_requests(0);
    sim.clear_requests(1);
    // SNI `livy-2` (curl -k: the certificate does not name it) and a Host
    // naming livy-2's address.
    let (code, err) = curl(
        &ca_file,
        &format!("https://livy-2:{port}/version"),
        &[
            "-k",
            "--resolve",
            &format!("livy-2:{port}:127.0.0.1"),
            "-H",
            &format!("Host: {other_host}"),
        ],
    );
    assert_eq!(code, "200", "{err}");
    assert_eq!(sim.curl_requests(0).len(), 1);
    assert!(sim.curl_requests(1).is_empty());
}

#[test]
fn the_proxys_own_answers_name_no_version() {
    let tmp = tempfile::tempdir().unwrap();
    let ca = Ca::new("version CA");
    let ca_file = write(tmp.path(), "ca.pem", &ca.pem());
    let (c, k) = ca.server(1);
    // Nothing listens at the node: every request is the proxy's own 503.
    let proxy = Proxy::start(&[
        "--node",
        &format!("127.0.0.1:{}", free_port()),
        "--hold-timeout",
        "1s",
        "--tls-cert",
        &write(tmp.path(), "c.pem", &c),
        "--tls-key",
        &write(tmp.path(), "k.pem", &k),
    ]);
    let out = Command::new("curl")
        .args(["-sS", "-i", "--max-time", "20", "--cacert", &ca_file])
        .arg(format!("https://localhost:{}/version", proxy.addr().port()))
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(text.starts_with("HTTP/"), "{text}");
    assert!(text.contains(" 503"), "{text}");
    assert!(
        !text.to_ascii_lowercase().contains("\nserver:"),
        "a Server header: {text}"
    );
    assert!(!text.contains(env!("CARGO_PKG_VERSION")), "{text}");
}

#[test]
fn the_admin_listener_speaks_tls_with_its_own_keys() {
    let tmp = tempfile::tempdir().unwrap();
    let ca = Ca::new("admin CA");
    let ca_file = write(tmp.path(), "ca.pem", &ca.pem());
    let (c, k) = ca.server(7);
    let (cc, ck) = ca.client("prometheus", false);
    let sim = SimCluster::plan(1).start_static(0);
    let proxy = Proxy::start(&[
        "--node",
        &sim.node_arg(0),
        "--admin-tls-cert",
        &write(tmp.path(), "c.pem", &c),
        "--admin-tls-key",
        &write(tmp.path(), "k.pem", &k),
        "--admin-tls-client-ca",
        &ca_file,
    ]);
    let admin = proxy
        .admin_url()
        .replace("http://127.0.0.1", "https://localhost");
    let client = [
        "--cert",
        &write(tmp.path(), "cc.pem", &cc),
        "--key",
        &write(tmp.path(), "ck.pem", &ck),
    ];
    assert!(
        wait_until(DEADLINE, || curl(
            &ca_file,
            &format!("{admin}/healthz"),
            &client
        )
        .0 == "200"),
        "{}",
        proxy.logs()
    );
    assert_eq!(curl(&ca_file, &format!("{admin}/healthz"), &[]).0, "000");
    let out = Command::new("curl")
        .args(["-sS", "--max-time", "10", "--cacert", &ca_file])
        .args(client)
        .arg(format!("{admin}/metrics"))
        .output()
        .unwrap();
    let metrics = String::from_utf8_lossy(&out.stdout);
    assert!(
        metrics.contains(
            "livy_proxy_tls_certificate_expiry_seconds{service=\"default\",listener=\"admin\"}"
        ),
        "{metrics}"
    );
    // The HTTP listener stays plain.
    assert!(curl_body(&format!("{}/version", proxy.url())).contains("version"));
}

/// Echoes `msg` over `conn`; what came back.
fn echo<S: Read + Write>(conn: &mut S, msg: &[u8]) -> Vec<u8> {
    conn.write_all(msg).unwrap();
    conn.flush().unwrap();
    let mut back = vec![0u8; msg.len()];
    conn.read_exact(&mut back).unwrap();
    back
}

#[test]
fn the_jdbc_listener_terminates_tls_in_front_of_a_plain_thrift_port() {
    let tmp = tempfile::tempdir().unwrap();
    let ca = Ca::new("JDBC CA");
    let ca_file = write(tmp.path(), "ca.pem", &ca.pem());
    let (_proxy, jdbc, _sim) = terminating_proxy(tmp.path(), &ca, &[]);
    let mut conn = TlsConn::open(jdbc, client_config(&ca_file, None)).expect("TLS to JDBC");
    assert_eq!(conn.serial(), "05");
    assert_eq!(
        echo(&mut conn.0, b"TCLIService.OpenSession"),
        b"TCLIService.OpenSession"
    );
    // openssl s_client sees the same certificate.
    assert_eq!(served_serial(jdbc, &ca_file).as_deref(), Some("05"));
}

/// Livy's Thrift port with `livy.server.thrift.use.SSL`: a TLS echo
/// serving `cert`/`key` (PEM) on a loopback port.
async fn tls_echo(c: &str, k: &str) -> SocketAddr {
    tls_echo_with(c, k, None).await
}

/// [`tls_echo`] requiring a client certificate `client_ca` signed, if set.
async fn tls_echo_with(c: &str, k: &str, client_ca: Option<&str>) -> SocketAddr {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .unwrap();
    let builder = match client_ca {
        None => builder.with_no_client_auth(),
        Some(ca) => {
            let mut roots = rustls::RootCertStore::empty();
            roots
                .add(rustls_pki_types::CertificateDer::from_pem_slice(ca.as_bytes()).unwrap())
                .unwrap();
            builder.with_client_cert_verifier(
                rustls::server::WebPkiClientVerifier::builder_with_provider(
                    Arc::new(roots),
                    provider,
                )
                .build()
                .unwrap(),
            )
        }
    };
    let config = builder
        .with_single_cert(
            rustls_pki_types::CertificateDer::pem_slice_iter(c.as_bytes())
                .map(|c| c.unwrap())
                .collect(),
            rustls_pki_types::PrivateKeyDer::from_pem_slice(k.as_bytes()).unwrap(),
        )
        .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let thrift = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let thrift_addr = thrift.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = thrift.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                if let Ok(tls) = acceptor.accept(tcp).await {
                    let (mut r, mut w) = tokio::io::split(tls);
                    let _ = tokio::io::copy(&mut r, &mut w).await;
                }
            });
        }
    });
    thrift_addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jdbc_passthrough_carries_tls_end_to_end_to_a_tls_thrift_port() {
    let tmp = tempfile::tempdir().unwrap();
    let ca = Ca::new("Livy Thrift CA");
    let ca_file = write(tmp.path(), "ca.pem", &ca.pem());
    let (c, k) = ca.server(9);
    let thrift_addr = tls_echo(&c, &k).await;
    let sim = SimCluster::plan(1).start_static(0);
    let jdbc: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let node = sim.node_arg(0);
    let id = node.split('=').next().unwrap().to_string();
    let proxy = Proxy::start(&[
        "--node",
        &node,
        "--thrift-listen",
        &jdbc.to_string(),
        "--thrift-node",
        &format!("{id}={thrift_addr}"),
    ]);
    let url = format!("{}/version", proxy.url());
    assert!(
        tokio::task::spawn_blocking(
            move || wait_until(DEADLINE, || curl_body(&url).contains("version"))
        )
        .await
        .unwrap(),
        "{}",
        proxy.logs()
    );
    let ca_for_client = ca_file.clone();
    let (serial, back) = tokio::task::spawn_blocking(move || {
        let mut conn = TlsConn::open(jdbc, client_config(&ca_for_client, None))
            .expect("TLS through the proxy");
        let back = echo(&mut conn.0, b"TCLIService.OpenSession");
        (conn.serial(), back)
    })
    .await
    .unwrap();
    // Livy's own certificate: the proxy did not terminate anything.
    assert_eq!(serial, "09");
    assert_eq!(back, b"TCLIService.OpenSession");
}

/// A proxy whose JDBC listener terminates TLS with `listener_ca`'s
/// certificate (serial 5) and re-encrypts to a TLS echo with
/// `livy_ca`'s (serial 9), trusting `trusted` for it; the JDBC address
/// and the sim node it probes.
async fn reencrypting_proxy(
    tmp: &Path,
    listener_ca: &Ca,
    livy_ca: &Ca,
    trusted: &str,
) -> (Proxy, SocketAddr, SimCluster) {
    let (c, k) = livy_ca.server(9);
    let thrift_addr = tls_echo(&c, &k).await;
    let more = vec!["--thrift-upstream-ca".to_string(), trusted.to_string()];
    // The tests run on the multi-thread runtime: its worker may block.
    tokio::task::block_in_place(|| reencrypt_to(tmp, listener_ca, thrift_addr, more))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jdbc_reencrypt_terminates_tls_and_originates_it_to_a_tls_thrift_port() {
    let tmp = tempfile::tempdir().unwrap();
    let (listener_ca, livy_ca) = (Ca::new("proxy CA"), Ca::new("Livy CA"));
    let client_ca = write(tmp.path(), "proxy-ca.pem", &listener_ca.pem());
    let livy_ca_file = write(tmp.path(), "livy-ca.pem", &livy_ca.pem());
    let (_proxy, jdbc, _sim) =
        reencrypting_proxy(tmp.path(), &listener_ca, &livy_ca, &livy_ca_file).await;
    let (serial, back) = tokio::task::spawn_blocking(move || {
        let mut conn = TlsConn::open(jdbc, client_config(&client_ca, None)).expect("TLS");
        let back = echo(&mut conn.0, b"TCLIService.OpenSession");
        (conn.serial(), back)
    })
    .await
    .unwrap();
    // The proxy's certificate to the client, Livy's verified behind it.
    assert_eq!(serial, "05");
    assert_eq!(back, b"TCLIService.OpenSession");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jdbc_reencrypt_refuses_a_thrift_port_whose_certificate_it_does_not_trust() {
    let tmp = tempfile::tempdir().unwrap();
    let (listener_ca, livy_ca) = (Ca::new("proxy CA"), Ca::new("Livy CA"));
    let client_ca = write(tmp.path(), "proxy-ca.pem", &listener_ca.pem());
    // Trusting the proxy's own CA, not Livy's.
    let (proxy, jdbc, _sim) =
        reencrypting_proxy(tmp.path(), &listener_ca, &livy_ca, &client_ca).await;
    let closed = tokio::task::spawn_blocking(move || {
        let mut conn = TlsConn::open(jdbc, client_config(&client_ca, None)).expect("TLS");
        conn.0.write_all(b"TCLIService.OpenSession").unwrap();
        let _ = conn.0.flush();
        let mut buf = [0u8; 8];
        matches!(conn.0.read(&mut buf), Ok(0) | Err(_))
    })
    .await
    .unwrap();
    assert!(closed, "the connection was relayed");
    assert!(
        wait_until(DEADLINE, || proxy
            .logs()
            .contains("TLS to Livy's Thrift port failed")),
        "{}",
        proxy.logs()
    );
}

/// A proxy whose JDBC listener terminates TLS with `ca`'s certificate
/// (serial 5) in front of a simulated Livy's plain Thrift port, with
/// `more` flags, once it serves; its JDBC address and the sim.
fn terminating_proxy(tmp: &Path, ca: &Ca, more: &[&str]) -> (Proxy, SocketAddr, SimCluster) {
    let (c, k) = ca.server(5);
    let plan = SimCluster::plan(1);
    let thrift_port = plan.thrift_port().to_string();
    let sim = plan.start_static(0);
    let jdbc: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let node = sim.node_arg(0);
    let (cert, key) = (write(tmp, "c.pem", &c), write(tmp, "k.pem", &k));
    let jdbc_arg = jdbc.to_string();
    let mut args = vec![
        "--node",
        &node,
        "--thrift-listen",
        &jdbc_arg,
        "--thrift-port",
        &thrift_port,
        "--thrift-tls-cert",
        &cert,
        "--thrift-tls-key",
        &key,
    ];
    args.extend_from_slice(more);
    let proxy = Proxy::start(&args);
    assert!(
        wait_until(DEADLINE, || curl_body(&format!("{}/version", proxy.url()))
            .contains("version")),
        "{}",
        proxy.logs()
    );
    (proxy, jdbc, sim)
}

/// Whether a TLS connection to the JDBC listener at `jdbc` (trusting
/// `ca`) echoes what it is sent: relayed to Livy and back.
fn jdbc_echoes(jdbc: SocketAddr, ca: &str) -> bool {
    let Ok(mut conn) = TlsConn::open(jdbc, client_config(ca, None)) else {
        return false;
    };
    let msg = b"TCLIService.OpenSession";
    if conn.0.write_all(msg).and_then(|()| conn.0.flush()).is_err() {
        return false;
    }
    let mut back = vec![0u8; msg.len()];
    conn.0.read_exact(&mut back).is_ok() && back == msg
}

/// A proxy whose JDBC listener terminates TLS with `listener_ca`'s
/// certificate (serial 5) and re-encrypts to Livy's Thrift port at
/// `thrift_addr` with `more` flags; the JDBC address.
fn reencrypt_to(
    tmp: &Path,
    listener_ca: &Ca,
    thrift_addr: SocketAddr,
    more: Vec<String>,
) -> (Proxy, SocketAddr, SimCluster) {
    let (lc, lk) = listener_ca.server(5);
    let sim = SimCluster::plan(1).start_static(0);
    let jdbc: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let node = sim.node_arg(0);
    let id = node.split('=').next().unwrap().to_string();
    let mut args: Vec<String> = [
        "--node",
        &node,
        "--thrift-listen",
        &jdbc.to_string(),
        "--thrift-node",
        &format!("{id}={thrift_addr}"),
        "--thrift-tls-cert",
        &write(tmp, "lc.pem", &lc),
        "--thrift-tls-key",
        &write(tmp, "lk.pem", &lk),
        "--thrift-tls-mode",
        "reencrypt",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    args.extend(more);
    let proxy = Proxy::start(&args);
    let url = format!("{}/version", proxy.url());
    assert!(
        wait_until(DEADLINE, || curl_body(&url).contains("version")),
        "{}",
        proxy.logs()
    );
    (proxy, jdbc, sim)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jdbc_reencrypt_takes_the_upstream_keys_and_presents_the_proxys_client_certificate() {
    let tmp = tempfile::tempdir().unwrap();
    let (listener_ca, livy_ca, proxy_client_ca) = (
        Ca::new("proxy CA"),
        Ca::new("Livy CA"),
        Ca::new("proxy client CA"),
    );
    let client_ca = write(tmp.path(), "proxy-ca.pem", &listener_ca.pem());
    let (c, k) = livy_ca.server(9);
    // Livy's Thrift port with SSL and client certificates required.
    let thrift_addr = tls_echo_with(&c, &k, Some(&proxy_client_ca.pem())).await;
    let (cc, ck) = proxy_client_ca.client("livy-proxy", false);
    // Only the upstream-* keys: one company CA and one proxy certificate
    // for Livy's REST and Thrift ports alike.
    let more = [
        "--upstream-ca".to_string(),
        write(tmp.path(), "livy-ca.pem", &livy_ca.pem()),
        "--upstream-client-cert".to_string(),
        write(tmp.path(), "cc.pem", &cc),
        "--upstream-client-key".to_string(),
        write(tmp.path(), "ck.pem", &ck),
    ];
    let tmp_path = tmp.path().to_path_buf();
    let (proxy, jdbc, _sim) = tokio::task::spawn_blocking(move || {
        reencrypt_to(&tmp_path, &listener_ca, thrift_addr, more.to_vec())
    })
    .await
    .unwrap();
    let ok = tokio::task::spawn_blocking(move || jdbc_echoes(jdbc, &client_ca))
        .await
        .unwrap();
    assert!(ok, "not relayed:\n{}", proxy.logs());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jdbc_reencrypt_trusts_a_ca_renewed_on_disk_without_sighup() {
    let tmp = tempfile::tempdir().unwrap();
    let (listener_ca, livy_ca, other_ca) = (
        Ca::new("proxy CA"),
        Ca::new("Livy CA"),
        Ca::new("some other CA"),
    );
    let client_ca = write(tmp.path(), "proxy-ca.pem", &listener_ca.pem());
    let (c, k) = livy_ca.server(9);
    let thrift_addr = tls_echo(&c, &k).await;
    // The mounted bundle names another CA at first.
    let mut secret =
        SecretVolume::with_files(tmp.path(), "livy-ca", &[("ca.crt", &other_ca.pem())]);
    let ca_path = secret.path("ca.crt");
    let tmp_path = tmp.path().to_path_buf();
    let (proxy, jdbc, _sim) = tokio::task::spawn_blocking(move || {
        reencrypt_to(
            &tmp_path,
            &listener_ca,
            thrift_addr,
            vec!["--thrift-upstream-ca".to_string(), ca_path],
        )
    })
    .await
    .unwrap();
    let ca = client_ca.clone();
    assert!(
        !tokio::task::spawn_blocking(move || jdbc_echoes(jdbc, &ca))
            .await
            .unwrap(),
        "relayed to a Thrift port signed by an untrusted CA"
    );
    // The kubelet swaps `..data`: no SIGHUP.
    secret.update_files(&[("ca.crt", &livy_ca.pem())]);
    let admin = proxy.admin_url();
    let (renewed, metrics) = tokio::task::spawn_blocking(move || {
        let renewed = wait_until(DEADLINE, || jdbc_echoes(jdbc, &client_ca));
        (renewed, curl_body(&format!("{admin}/metrics")))
    })
    .await
    .unwrap();
    assert!(renewed, "the renewed CA is not used:\n{}", proxy.logs());
    let success = metric(
        &metrics,
        "livy_proxy_tls_reloads_total{service=\"default\",listener=\"jdbc_upstream\",result=\"success\"}",
    );
    assert!(success >= Some(1.0), "{metrics}");
    assert!(
        proxy.logs().lines().any(|l| l
            .contains("TLS to Livy: CA bundle and client certificate reloaded")
            && l.contains("file change")
            && l.contains("jdbc_upstream")),
        "{}",
        proxy.logs()
    );
}

#[test]
fn the_jdbc_access_log_names_the_verified_client_certificate() {
    let tmp = tempfile::tempdir().unwrap();
    let ca = Ca::new("JDBC mTLS CA");
    let ca_file = write(tmp.path(), "ca.pem", &ca.pem());
    let (cc, ck) = ca.client("alice", false);
    let (proxy, jdbc, _sim) =
        terminating_proxy(tmp.path(), &ca, &["--thrift-tls-client-ca", &ca_file]);
    let (cc, ck) = (
        write(tmp.path(), "cc.pem", &cc),
        write(tmp.path(), "ck.pem", &ck),
    );
    {
        let mut conn =
            TlsConn::open(jdbc, client_config(&ca_file, Some((&cc, &ck)))).expect("mTLS to JDBC");
        assert_eq!(
            echo(&mut conn.0, b"TCLIService.OpenSession"),
            b"TCLIService.OpenSession"
        );
    }
    assert!(
        wait_until(DEADLINE, || proxy.logs().lines().any(|l| l
            .contains("jdbc")
            && l.contains("access")
            && l.contains("client_cert=\"CN=alice\"")
            && l.contains(
                "client_san=\"DNS:alice.example,URI:spiffe://test/alice\""
            ))),
        "{}",
        proxy.logs()
    );
}

/// `livy-proxy health` with `args`: its exit code and stderr.
fn health(args: &[&str]) -> (Option<i32>, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_livy-proxy"))
        .arg("health")
        .args(args)
        .env_clear()
        .output()
        .expect("the binary runs");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).to_string(),
    )
}

#[test]
fn health_speaks_https_to_an_admin_tls_listener_trusting_the_certificate_it_serves() {
    let tmp = tempfile::tempdir().unwrap();
    let ca = Ca::new("admin CA");
    let ca_file = write(tmp.path(), "ca.pem", &ca.pem());
    // A certificate for a service name, not for the 127.0.0.1 health asks:
    // the proxy's own certificate is trusted as it is.
    let (cert, key) = ca.issue(&["livy-proxy.example"], "livy-proxy");
    let admin_cert = write(tmp.path(), "admin.pem", &cert);
    let admin_key = write(tmp.path(), "admin-key.pem", &key);
    let (cc, ck) = ca.client("kubelet", false);
    let (cc, ck) = (
        write(tmp.path(), "cc.pem", &cc),
        write(tmp.path(), "ck.pem", &ck),
    );
    let sim = SimCluster::plan(1).start_static(0);
    let proxy = Proxy::start(&[
        "--node",
        &sim.node_arg(0),
        "--admin-tls-cert",
        &admin_cert,
        "--admin-tls-key",
        &admin_key,
    ]);
    let admin = proxy.admin_url().replace("http://", "");
    let https = format!("https://{admin}/healthz");
    assert!(
        wait_until(DEADLINE, || health(&[
            &https,
            "--admin-tls-cert",
            &admin_cert
        ])
        .0 == Some(0)),
        "{:?}\n{}",
        health(&[&https, "--admin-tls-cert", &admin_cert]),
        proxy.logs()
    );
    // No URL: admin-listen's /healthz, over https because admin-tls-cert
    // is set, here from the same config file the proxy could read.
    let config = write(
        tmp.path(),
        "livy-proxy.toml",
        &format!("admin-listen = \"{admin}\"\nadmin-tls-cert = \"{admin_cert}\"\n"),
    );
    assert_eq!(health(&["--config", &config]), (Some(0), String::new()));
    // Plain HTTP to a TLS listener, or TLS trusting another certificate:
    // not healthy.
    assert_eq!(health(&[&format!("http://{admin}/healthz")]).0, Some(1));
    let (code, err) = health(&[&https, "--admin-tls-cert", &ca_file]);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("certificate"), "{err}");
    drop(proxy);

    // An admin listener that requires client certificates.
    let proxy = Proxy::start(&[
        "--node",
        &sim.node_arg(0),
        "--admin-tls-cert",
        &admin_cert,
        "--admin-tls-key",
        &admin_key,
        "--admin-tls-client-ca",
        &ca_file,
    ]);
    let admin = proxy.admin_url().replace("http://", "");
    let https = format!("https://{admin}/healthz");
    let with_cert = [
        https.as_str(),
        "--admin-tls-cert",
        &admin_cert,
        "--client-cert",
        &cc,
        "--client-key",
        &ck,
    ];
    assert!(
        wait_until(DEADLINE, || health(&with_cert).0 == Some(0)),
        "{:?}\n{}",
        health(&with_cert),
        proxy.logs()
    );
    assert_eq!(
        health(&[&https, "--admin-tls-cert", &admin_cert]).0,
        Some(1)
    );
    // Half a client certificate is a usage error.
    assert_eq!(
        health(&[
            &https,
            "--admin-tls-cert",
            &admin_cert,
            "--client-cert",
            &cc
        ])
        .0,
        Some(2)
    );
}

fn run(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_livy-proxy"))
        .args(args)
        .env_clear()
        .output()
        .expect("the binary runs")
}

#[test]
fn tls_key_combinations_and_bad_files_are_config_errors_naming_the_key() {
    let tmp = tempfile::tempdir().unwrap();
    let ca = Ca::new("config CA");
    let (c, k) = ca.server(1);
    let cert = write(tmp.path(), "c.pem", &c);
    let key = write(tmp.path(), "k.pem", &k);
    let ca_file = write(tmp.path(), "ca.pem", &ca.pem());
    let garbage = write(tmp.path(), "garbage.pem", "not PEM\n");
    let base = ["--node", "127.0.0.1:1", "--admin-listen", "off"];
    for (more, key_named) in [
        (vec!["--tls-client-auth", "optional"], "tls-client-auth"),
        (vec!["--tls-client-ca", &ca_file], "tls-client-ca"),
        (
            vec![
                "--tls-cert",
                &cert,
                "--tls-key",
                &key,
                "--tls-client-auth",
                "sometimes",
                "--tls-client-ca",
                &ca_file,
            ],
            "tls-client-auth",
        ),
        (
            vec![
                "--tls-cert",
                &cert,
                "--tls-key",
                &key,
                "--tls-client-ca",
                &garbage,
            ],
            "tls-client-ca",
        ),
        (vec!["--admin-tls-cert", &cert], "admin-tls-cert"),
        (vec!["--thrift-tls-key", &key], "thrift-tls-key"),
        (
            vec!["--thrift-tls-cert", &garbage, "--thrift-tls-key", &key],
            "thrift-tls-cert",
        ),
        (vec!["--tls-listen", "127.0.0.1:0"], "tls-listen"),
        (vec!["--thrift-tls-mode", "reencrypt"], "thrift-tls-mode"),
        (
            vec![
                "--thrift-tls-cert",
                &cert,
                "--thrift-tls-key",
                &key,
                "--thrift-tls-mode",
                "passthrough",
            ],
            "thrift-tls-mode",
        ),
        (vec!["--thrift-upstream-ca", &ca_file], "thrift-upstream-ca"),
        (
            vec![
                "--thrift-tls-cert",
                &cert,
                "--thrift-tls-key",
                &key,
                "--thrift-tls-mode",
                "reencrypt",
                "--thrift-upstream-ca",
                &garbage,
            ],
            "thrift-upstream-ca",
        ),
        (
            vec!["--thrift-upstream-server-name", "livy.test"],
            "thrift-upstream-server-name",
        ),
        (
            vec![
                "--thrift-tls-cert",
                &cert,
                "--thrift-tls-key",
                &key,
                "--thrift-tls-mode",
                "reencrypt",
                "--thrift-upstream-client-cert",
                &cert,
                // upstream-client-key does not complete a thrift-upstream pair.
                "--upstream-client-cert",
                &cert,
                "--upstream-client-key",
                &key,
            ],
            "thrift-upstream-client-cert",
        ),
        (vec!["--max-tls-handshakes", "0"], "max-tls-handshakes"),
        (
            vec!["--tls-handshake-timeout", "0s"],
            "tls-handshake-timeout",
        ),
        (
            vec!["--tls-client-identity-header", "bad header"],
            "tls-client-identity-header",
        ),
    ] {
        let mut args = base.to_vec();
        args.extend(more.iter().copied());
        let out = run(&args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{more:?}: {err}");
        // The key, as the loader names it or as clap names a bad flag value.
        assert!(
            err.contains(&format!("`{key_named}`")) || err.contains(&format!("'--{key_named} ")),
            "{more:?}: {err}"
        );
        assert_eq!(err.trim().lines().count(), 1, "{more:?}: {err}");
    }
}

#[test]
fn an_idle_tls_connection_is_parked_and_serves_the_next_request() {
    let tmp = tempfile::tempdir().unwrap();
    let ca = Ca::new("park CA");
    let ca_file = write(tmp.path(), "ca.pem", &ca.pem());
    let (c, k) = ca.server(1);
    let cert = write(tmp.path(), "tls.crt", &c);
    let key = write(tmp.path(), "tls.key", &k);
    let sim = SimCluster::plan(1).start_static(0);
    let proxy = Proxy::start_with_env(
        &[
            "--node",
            &sim.node_arg(0),
            "--tls-cert",
            &cert,
            "--tls-key",
            &key,
        ],
        &[("RUST_LOG", "info,livy_proxy::http_proxy::park=trace")],
    );
    let url = format!("https://localhost:{}/version", proxy.addr().port());
    wait_ready(&proxy, &ca_file, &url);
    let parked = || proxy.logs().matches("connection parked while idle").count();
    let before = parked();
    let mut kept = TlsConn::open(proxy.addr(), client_config(&ca_file, None)).unwrap();
    for i in 0..3 {
        assert_eq!(kept.get("/version").unwrap(), 200, "request {i}");
        assert!(
            wait_until(DEADLINE, || parked() > before + i),
            "request {i}'s TLS connection was not parked:\n{}",
            proxy.logs()
        );
    }
}
