//! TLS on the HTTP listener (`tls-cert`, `tls-key`), with the binary in
//! front of one static livy-sim: certificates made here with rcgen (a CA
//! and a server certificate for 127.0.0.1 and localhost), clients are curl
//! and raw sockets.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::pki::Ca;
use common::{Proxy, SimCluster};

/// A CA and a server certificate it signed, as PEM files in a temp dir.
struct Pki {
    dir: tempfile::TempDir,
}

impl Pki {
    fn new() -> Pki {
        let dir = tempfile::tempdir().expect("temp dir");
        let ca = Ca::new("livy-proxy test CA");
        let (cert, key) = ca.server(1);
        std::fs::write(dir.path().join("ca.pem"), ca.pem()).unwrap();
        std::fs::write(dir.path().join("cert.pem"), cert).unwrap();
        std::fs::write(dir.path().join("key.pem"), key).unwrap();
        Pki { dir }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn ca(&self) -> String {
        self.path("ca.pem").display().to_string()
    }

    fn cert(&self) -> String {
        self.path("cert.pem").display().to_string()
    }

    fn key(&self) -> String {
        self.path("key.pem").display().to_string()
    }
}

/// The proxy with TLS in front of `sim`, with `more` flags.
fn tls_proxy(pki: &Pki, sim: &SimCluster, more: &[&str]) -> Proxy {
    let mut args = vec![
        "--node".to_string(),
        sim.node_arg(0),
        "--tls-cert".into(),
        pki.cert(),
        "--tls-key".into(),
        pki.key(),
    ];
    args.extend(more.iter().map(|s| s.to_string()));
    Proxy::start(&args)
}

/// curl with the test CA; its `%{http_code} %{http_version}`.
fn curl(ca: &str, url: &str, more: &[&str]) -> String {
    let out = Command::new("curl")
        .args(["-sS", "--max-time", "10", "--cacert", ca])
        .args(["-o", "/dev/null", "-w", "%{http_code} %{http_version}"])
        .args(more)
        .arg(url)
        .output()
        .expect("curl runs");
    assert!(
        out.status.success(),
        "curl {url} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).to_string()
}

#[test]
fn http1_and_h2_over_tls_reach_livy_as_https() {
    let pki = Pki::new();
    let sim = SimCluster::plan(1).start_static(0);
    let proxy = tls_proxy(&pki, &sim, &[]);
    let port = proxy.addr().port();
    // The proxy names the leader after its first probe round.
    let url = format!("https://127.0.0.1:{port}/version");
    let ready = common::wait_until(Duration::from_secs(20), || {
        curl(&pki.ca(), &url, &["--http1.1"]).starts_with("200")
    });
    assert!(ready, "no 200 over TLS:\n{}", proxy.logs());
    sim.clear_requests(0);

    assert_eq!(curl(&pki.ca(), &url, &["--http1.1"]), "200 1.1");
    // HTTP/2 chosen by ALPN, not by prior knowledge.
    assert_eq!(curl(&pki.ca(), &url, &["--http2"]), "200 2");
    // The certificate's other name.
    assert_eq!(
        curl(
            &pki.ca(),
            &format!("https://localhost:{port}/version"),
            &["--http1.1"]
        ),
        "200 1.1"
    );

    let seen = sim.curl_requests(0);
    assert_eq!(seen.len(), 3, "{seen:?}");
    for r in &seen {
        assert_eq!(r["headers"]["x-forwarded-proto"], "https", "{r}");
        assert_eq!(r["headers"]["x-forwarded-for"], "127.0.0.1", "{r}");
    }
}

#[test]
fn a_silent_client_is_closed_after_tls_handshake_timeout() {
    let pki = Pki::new();
    let sim = SimCluster::plan(1).start_static(0);
    let proxy = tls_proxy(&pki, &sim, &["--tls-handshake-timeout", "1s"]);
    let mut silent = TcpStream::connect(proxy.addr()).unwrap();
    silent
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let started = Instant::now();
    let mut buf = [0u8; 64];
    let read = silent.read(&mut buf);
    let waited = started.elapsed();
    assert!(
        matches!(read, Ok(0))
            || read
                .as_ref()
                .is_err_and(|e| e.kind() != std::io::ErrorKind::WouldBlock
                    && e.kind() != std::io::ErrorKind::TimedOut),
        "not closed: {read:?}"
    );
    assert!(
        waited >= Duration::from_millis(900) && waited < Duration::from_secs(5),
        "closed after {waited:?}"
    );
    // Logged just after the socket is dropped.
    assert!(
        common::wait_until(Duration::from_secs(5), || proxy
            .logs()
            .contains("TLS handshake timed out")),
        "{}",
        proxy.logs()
    );
}

#[test]
fn plain_http_to_the_tls_port_is_not_served() {
    let pki = Pki::new();
    let sim = SimCluster::plan(1).start_static(0);
    let proxy = tls_proxy(&pki, &sim, &[]);
    let mut plain = TcpStream::connect(proxy.addr()).unwrap();
    plain
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    plain
        .write_all(b"GET /version HTTP/1.1\r\nHost: proxy\r\nUser-Agent: curl/plain\r\n\r\n")
        .unwrap();
    let mut answer = Vec::new();
    let _ = plain.read_to_end(&mut answer);
    assert!(
        !answer.starts_with(b"HTTP/"),
        "served over plain HTTP: {}",
        String::from_utf8_lossy(&answer)
    );
    assert!(sim.curl_requests(0).is_empty(), "reached Livy");
    assert!(
        common::wait_until(Duration::from_secs(5), || proxy
            .logs()
            .contains("TLS handshake failed")),
        "{}",
        proxy.logs()
    );
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
fn one_of_the_two_keys_or_a_bad_pem_is_a_config_error_naming_it() {
    let pki = Pki::new();
    let node = ["--node", "127.0.0.1:1", "--admin-listen", "off"];
    let with = |more: &[&str]| {
        let mut a = node.to_vec();
        a.extend_from_slice(more);
        run(&a)
    };
    let (cert, key) = (pki.cert(), pki.key());
    assert_config_error(&with(&["--tls-cert", &cert]), "tls-cert");
    assert_config_error(&with(&["--tls-key", &key]), "tls-key");

    let garbage = pki.path("garbage.pem");
    std::fs::write(&garbage, "not a PEM file\n").unwrap();
    let garbage = garbage.display().to_string();
    assert_config_error(
        &with(&["--tls-cert", &garbage, "--tls-key", &key]),
        "tls-cert",
    );
    assert_config_error(
        &with(&["--tls-cert", &cert, "--tls-key", &garbage]),
        "tls-key",
    );
    // A key that is not the certificate's.
    let other = pki.path("other-key.pem");
    std::fs::write(&other, rcgen::KeyPair::generate().unwrap().serialize_pem()).unwrap();
    assert_config_error(
        &with(&[
            "--tls-cert",
            &cert,
            "--tls-key",
            &other.display().to_string(),
        ]),
        "tls-key",
    );
    let missing = Path::new("/nonexistent/cert.pem").display().to_string();
    assert_config_error(
        &with(&["--tls-cert", &missing, "--tls-key", &key]),
        "tls-cert",
    );

    // The same from the file, with the file named.
    let file = pki.path("proxy.toml");
    std::fs::write(
        &file,
        format!("node = [\"127.0.0.1:1\"]\ntls-key = {key:?}\n"),
    )
    .unwrap();
    let out = run(&[
        "--config",
        &file.display().to_string(),
        "--admin-listen",
        "off",
    ]);
    assert_config_error(&out, "tls-key");
    assert!(String::from_utf8_lossy(&out.stderr).contains("config file"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_h2_connection_over_tls_is_closed_after_client_header_timeout() {
    use rustls_pki_types::pem::PemObject;

    let pki = Pki::new();
    let sim = SimCluster::plan(1).start_static(0);
    let proxy = tls_proxy(&pki, &sim, &["--client-header-timeout", "1s"]);
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(rustls_pki_types::CertificateDer::from_pem_file(pki.path("ca.pem")).unwrap())
        .unwrap();
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    config.alpn_protocols = vec![b"h2".to_vec()];
    let tcp = tokio::net::TcpStream::connect(proxy.addr()).await.unwrap();
    let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect("localhost".try_into().unwrap(), tcp)
        .await
        .expect("TLS handshake");
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    // Preface and SETTINGS, then nothing: the handle is kept, so the
    // client does not close the connection itself.
    let (_send, connection) = h2::client::handshake(tls).await.expect("h2 handshake");
    let started = Instant::now();
    let ended = tokio::time::timeout(Duration::from_secs(10), connection).await;
    let waited = started.elapsed();
    assert!(ended.is_ok(), "still open after {waited:?}");
    assert!(
        waited >= Duration::from_millis(900) && waited < Duration::from_secs(5),
        "closed after {waited:?}"
    );
}
