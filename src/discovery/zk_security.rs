//! Securing the proxy's own ZooKeeper session: TLS and SASL DIGEST-MD5.
//!
//! Livy's servers reach a secured ensemble through Curator with
//! `zookeeper.client.secure`, `zookeeper.ssl.*` and a JAAS `Client` section;
//! the proxy must reach the same ensemble the same way to read the latch.
//! The `zookeeper-client` crate does both (its `tls` and `sasl-digest-md5`
//! features): this module turns the `zk-tls-*` and `zk-sasl-*` keys into its
//! connector options.
//!
//! The files are read again for every new session (each [`apply`] call), so
//! a rotated certificate or password is picked up at the next session
//! without a restart; [`ZkSecurity::check`] reads them once at start so a bad
//! file is a configuration error naming its key. The password comes only
//! from a file: a command line is visible to every user of the host.
//!
//! [`apply`]: ZkSecurity::apply

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rustls_pki_types::ServerName;
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;
use zookeeper_client as zk;

/// How the proxy authenticates to ZooKeeper and protects the connection.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ZkSecurity {
    /// TLS to every host of the connect string, when set.
    pub tls: Option<ZkTls>,
    /// SASL DIGEST-MD5 login, when set.
    pub sasl: Option<ZkSasl>,
}

/// TLS to ZooKeeper's `secureClientPort`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ZkTls {
    /// PEM CA bundle the servers' certificates must chain to (`zk-tls-ca`);
    /// the system roots are not used.
    pub ca: PathBuf,
    /// PEM client certificate chain and key (`zk-tls-cert`, `zk-tls-key`),
    /// for servers with `ssl.clientAuth=need`.
    pub identity: Option<(PathBuf, PathBuf)>,
}

/// SASL DIGEST-MD5, the JAAS `DigestLoginModule` login of ZooKeeper.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ZkSasl {
    /// The user (`zk-sasl-user`), as in the server's `user_<name>` entry.
    pub user: String,
    /// File holding the password (`zk-sasl-password-file`).
    pub password_file: PathBuf,
}

/// A problem with one of the ZooKeeper security keys, naming it.
#[derive(Debug, thiserror::Error)]
#[error("{problem}")]
pub struct ZkSecurityError {
    /// The configuration key at fault (`zk-tls-ca`, ...).
    pub key: &'static str,
    /// What is wrong, with the file's path.
    pub problem: String,
}

fn bad(key: &'static str, path: &Path, problem: impl std::fmt::Display) -> ZkSecurityError {
    ZkSecurityError {
        key,
        problem: format!("{}: {problem}", path.display()),
    }
}

fn read(key: &'static str, path: &Path) -> Result<String, ZkSecurityError> {
    std::fs::read_to_string(path).map_err(|e| bad(key, path, e))
}

/// The password in a password file's text: the whole file but one trailing
/// line end (how `echo` and editors write it). Empty is refused.
pub fn password_from_file_text(text: &str) -> Option<&str> {
    let password = text
        .strip_suffix("\r\n")
        .or_else(|| text.strip_suffix('\n'))
        .unwrap_or(text);
    (!password.is_empty()).then_some(password)
}

impl ZkSecurity {
    /// Builds the settings from the five keys (each `None` when unset) and
    /// checks that they go together: a client certificate needs its key and
    /// a CA, a user needs a password file and the other way round.
    pub fn from_keys(
        ca: Option<PathBuf>,
        cert: Option<PathBuf>,
        key: Option<PathBuf>,
        user: Option<String>,
        password_file: Option<PathBuf>,
    ) -> Result<ZkSecurity, ZkSecurityError> {
        let unpaired = |key: &'static str, problem: &str| ZkSecurityError {
            key,
            problem: problem.to_string(),
        };
        let identity = match (cert, key) {
            (None, None) => None,
            (Some(_), None) => {
                return Err(unpaired("zk-tls-cert", "set without zk-tls-key"));
            }
            (None, Some(_)) => {
                return Err(unpaired("zk-tls-key", "set without zk-tls-cert"));
            }
            (Some(c), Some(k)) => Some((c, k)),
        };
        let tls = match (ca, identity) {
            (None, None) => None,
            (None, Some(_)) => {
                return Err(unpaired(
                    "zk-tls-cert",
                    "a client certificate needs zk-tls-ca (TLS to ZooKeeper is on only with a CA)",
                ));
            }
            (Some(ca), identity) => Some(ZkTls { ca, identity }),
        };
        let sasl = match (user, password_file) {
            (None, None) => None,
            (Some(_), None) => {
                return Err(unpaired(
                    "zk-sasl-user",
                    "set without zk-sasl-password-file",
                ));
            }
            (None, Some(_)) => {
                return Err(unpaired(
                    "zk-sasl-password-file",
                    "set without zk-sasl-user",
                ));
            }
            (Some(user), Some(_)) if user.is_empty() => {
                return Err(unpaired("zk-sasl-user", "must not be empty"));
            }
            (Some(user), Some(password_file)) => Some(ZkSasl {
                user,
                password_file,
            }),
        };
        Ok(ZkSecurity { tls, sasl })
    }

    /// Whether the connect string's hosts are reached over TLS.
    pub fn tls(&self) -> bool {
        self.tls.is_some()
    }

    /// Reads every file once, as a session would: start-up fails on a
    /// missing or unusable file rather than the first session.
    pub fn check(&self) -> Result<(), ZkSecurityError> {
        if self.tls.is_some() {
            // Stricter than the crate about naming the key at fault, and
            // checks that the client key is the certificate's.
            self.rustls_client()?;
        }
        self.apply(zk::Client::connector()).map(|_| ())
    }

    /// For the start-up log line: what protects the session.
    pub fn describe(&self) -> String {
        let tls = match &self.tls {
            None => "plain TCP".to_string(),
            Some(t) if t.identity.is_some() => "TLS with a client certificate".to_string(),
            Some(_) => "TLS".to_string(),
        };
        match &self.sasl {
            None => tls,
            Some(s) => format!("{tls}, SASL DIGEST-MD5 as {}", s.user),
        }
    }

    /// `connector` with TLS and SASL set as configured, the files read now.
    pub fn apply(&self, mut connector: zk::Connector) -> Result<zk::Connector, ZkSecurityError> {
        if let Some(t) = &self.tls {
            // The crate builds its rustls configuration with the process's
            // default provider; two providers are compiled in (ring, ours,
            // and aws-lc-rs through the crate's rustls defaults), so one
            // must be named. Already installed is fine.
            let _ = rustls::crypto::ring::default_provider().install_default();
            let ca = read("zk-tls-ca", &t.ca)?;
            let mut options = zk::TlsOptions::new()
                .with_pem_ca(&ca)
                .map_err(|e| bad("zk-tls-ca", &t.ca, e))?;
            if let Some((cert_path, key_path)) = &t.identity {
                let cert = read("zk-tls-cert", cert_path)?;
                let key = read("zk-tls-key", key_path)?;
                options = options
                    .with_pem_identity(&cert, &key)
                    .map_err(|e| bad("zk-tls-cert", cert_path, e))?;
            }
            connector = connector.with_tls(options);
        }
        if let Some(s) = &self.sasl {
            let text = read("zk-sasl-password-file", &s.password_file)?;
            let password = password_from_file_text(&text)
                .ok_or_else(|| bad("zk-sasl-password-file", &s.password_file, "is empty"))?;
            connector = connector.with_sasl(zk::SaslOptions::digest_md5(
                s.user.clone(),
                password.to_string(),
            ));
        }
        Ok(connector)
    }
}

/// The `host`, `port` pairs of a connect string `host:port,...[/chroot]`
/// (IPv6 literals without their brackets), for the TLS diagnosis.
pub fn hosts(connect: &str) -> Vec<(String, u16)> {
    let hosts = connect.split_once('/').map_or(connect, |(h, _)| h);
    hosts
        .split(',')
        .filter_map(|hp| {
            let (host, port) = hp.trim().rsplit_once(':')?;
            let host = host.trim_start_matches('[').trim_end_matches(']');
            Some((host.to_string(), port.parse().ok()?))
        })
        .collect()
}

impl ZkSecurity {
    /// Why the TLS handshake fails, when it does: the crate reports a
    /// refused certificate only as "no available hosts", which would read
    /// as an outage (and start probing the node list). So after a failed
    /// connect this shakes hands once with each host that accepts TCP,
    /// with the same CA and client certificate, and names the first TLS
    /// failure. `None`: no host refused TLS (unreachable, or another fault).
    pub async fn diagnose_tls(&self, connect: &str, timeout: Duration) -> Option<String> {
        let config = match self.rustls_client() {
            Ok(c) => c,
            Err(e) => return Some(e.to_string()),
        };
        let connector = tokio_rustls::TlsConnector::from(config);
        for (host, port) in hosts(connect) {
            let Ok(name) = ServerName::try_from(host.clone()) else {
                continue;
            };
            let Ok(Ok(tcp)) =
                tokio::time::timeout(timeout, TcpStream::connect((host.as_str(), port))).await
            else {
                continue;
            };
            let failed = |e: &dyn std::fmt::Display| {
                Some(format!(
                    "TLS handshake with ZooKeeper {host}:{port} failed: {e}"
                ))
            };
            let mut tls = match tokio::time::timeout(timeout, connector.connect(name, tcp)).await {
                Err(_) => return failed(&"timed out"),
                Ok(Err(e)) => return failed(&e),
                Ok(Ok(tls)) => tls,
            };
            // Under TLS 1.3 the server judges the client certificate after
            // the client is done: its refusal arrives as an alert on the
            // first read. A server that says nothing accepted us.
            let mut byte = [0u8; 1];
            match tokio::time::timeout(Duration::from_millis(500), tls.read(&mut byte)).await {
                Ok(Err(e)) => return failed(&e),
                Ok(Ok(0)) => {
                    return failed(
                        &"the server closed the connection (client certificate refused?)",
                    );
                }
                _ => {}
            }
        }
        None
    }

    /// A rustls client configuration equal to the one the crate builds
    /// from the same files (ring provider), for [`Self::diagnose_tls`].
    fn rustls_client(&self) -> Result<Arc<rustls::ClientConfig>, ZkSecurityError> {
        let Some(t) = &self.tls else {
            return Err(ZkSecurityError {
                key: "zk-tls-ca",
                problem: "TLS to ZooKeeper is not configured".to_string(),
            });
        };
        // The same PEM reading as the TLS clients to Livy, but only the
        // `zk-tls-ca` bundle is trusted (no system roots), as the crate does.
        let keyed = |e: crate::tls::pem::PemError| ZkSecurityError {
            key: e.key,
            problem: e.problem,
        };
        let mut roots = rustls::RootCertStore::empty();
        crate::tls::pem::add_roots(&mut roots, "zk-tls-ca", &t.ca).map_err(keyed)?;
        let identity = match &t.identity {
            None => None,
            Some((cert, key)) => Some(
                crate::tls::pem::Identity::read("zk-tls-cert", cert, "zk-tls-key", key)
                    .map_err(keyed)?,
            ),
        };
        let config =
            crate::tls::pem::client_config(roots, identity, &[], "zk-tls-ca").map_err(keyed)?;
        Ok(Arc::new(config))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connect_string_hosts() {
        assert_eq!(
            hosts("h1:2181,[::1]:2182/livy"),
            vec![("h1".to_string(), 2181), ("::1".to_string(), 2182)]
        );
        assert_eq!(hosts("h1:x,h2:1"), vec![("h2".to_string(), 1)]);
    }

    #[test]
    fn password_file_text() {
        assert_eq!(password_from_file_text("secret\n"), Some("secret"));
        assert_eq!(password_from_file_text("secret\r\n"), Some("secret"));
        assert_eq!(password_from_file_text("secret"), Some("secret"));
        // Only one line end goes: the rest is the password.
        assert_eq!(password_from_file_text(" s \n\n"), Some(" s \n"));
        assert_eq!(password_from_file_text("\n"), None);
        assert_eq!(password_from_file_text(""), None);
    }

    #[test]
    fn keys_go_together() {
        let p = |s: &str| Some(PathBuf::from(s));
        let key_of = |r: Result<ZkSecurity, ZkSecurityError>| r.unwrap_err().key;
        assert_eq!(
            ZkSecurity::from_keys(None, None, None, None, None).unwrap(),
            ZkSecurity::default()
        );
        assert_eq!(
            key_of(ZkSecurity::from_keys(p("ca"), p("c"), None, None, None)),
            "zk-tls-cert"
        );
        assert_eq!(
            key_of(ZkSecurity::from_keys(p("ca"), None, p("k"), None, None)),
            "zk-tls-key"
        );
        assert_eq!(
            key_of(ZkSecurity::from_keys(None, p("c"), p("k"), None, None)),
            "zk-tls-cert"
        );
        assert_eq!(
            key_of(ZkSecurity::from_keys(
                None,
                None,
                None,
                Some("u".into()),
                None
            )),
            "zk-sasl-user"
        );
        assert_eq!(
            key_of(ZkSecurity::from_keys(None, None, None, None, p("pw"))),
            "zk-sasl-password-file"
        );
        let s = ZkSecurity::from_keys(p("ca"), None, None, Some("livy".into()), p("pw")).unwrap();
        assert!(s.tls());
        assert_eq!(s.describe(), "TLS, SASL DIGEST-MD5 as livy");
    }

    #[test]
    fn missing_files_name_their_key() {
        let s = ZkSecurity::from_keys(Some("/nonexistent/ca.pem".into()), None, None, None, None)
            .unwrap();
        assert_eq!(s.check().unwrap_err().key, "zk-tls-ca");
        let dir = tempfile::tempdir().unwrap();
        let empty = dir.path().join("pw");
        std::fs::write(&empty, "\n").unwrap();
        let s = ZkSecurity::from_keys(None, None, None, Some("livy".into()), Some(empty)).unwrap();
        let e = s.check().unwrap_err();
        assert_eq!(e.key, "zk-sasl-password-file");
        assert!(e.problem.contains("empty"), "{e}");
        let garbage = dir.path().join("ca.pem");
        std::fs::write(&garbage, "not a certificate\n").unwrap();
        let s = ZkSecurity::from_keys(Some(garbage), None, None, None, None).unwrap();
        assert_eq!(s.check().unwrap_err().key, "zk-tls-ca");
    }
}
