//! Securing the proxy's own ZooKeeper session: TLS, SASL DIGEST-MD5 and
//! SASL GSSAPI (Kerberos).
//!
//! Livy's servers reach a secured ensemble through Curator with
//! `zookeeper.client.secure`, `zookeeper.ssl.*` and a JAAS `Client` section;
//! the proxy must reach the same ensemble the same way to read the latch.
//! The `zookeeper-client` crate does all three (its `tls`, `sasl-digest-md5`
//! and `sasl-gssapi` features): this module turns the `zk-tls-*`,
//! `zk-sasl-*` and `zk-kerberos-*` keys into its connector options; the
//! Kerberos credentials themselves are [`super::zk_kerberos`]'s business.
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
    /// SASL GSSAPI (Kerberos) login, when set; never with `sasl`.
    pub kerberos: Option<ZkKerberos>,
}

/// SASL GSSAPI, the JAAS `Krb5LoginModule` login of ZooKeeper's clients.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ZkKerberos {
    /// The client principal (`zk-kerberos-principal`); `None`: the
    /// credential cache's (or the keytab's first) principal.
    pub principal: Option<String>,
    /// The keytab the tickets come from (`zk-kerberos-keytab`); `None`:
    /// the process's credential cache, kept by `kinit` or `k5start`.
    pub keytab: Option<PathBuf>,
    /// The servers' principal's first part (`zk-kerberos-service`, Java's
    /// `zookeeper.sasl.client.username`).
    pub service: String,
    /// The servers' principal's host part for every host
    /// (`zk-kerberos-server-host`); `None`: each host of the connect string.
    pub server_host: Option<String>,
}

/// The `zk-sasl-mechanism` and `zk-kerberos-*` keys as given.
#[derive(Clone, Debug, Default)]
pub struct KerberosKeys {
    /// `zk-sasl-mechanism`: `digest-md5`, `gssapi`, or unset.
    pub mechanism: Option<String>,
    /// `zk-kerberos-principal`.
    pub principal: Option<String>,
    /// `zk-kerberos-keytab`.
    pub keytab: Option<PathBuf>,
    /// `zk-kerberos-service`.
    pub service: Option<String>,
    /// `zk-kerberos-server-host`.
    pub server_host: Option<String>,
}

/// Why a keytab file's bytes are not a keytab (MIT and Java keytabs start
/// with the version bytes 0x05 0x01 or 0x05 0x02), or `None`.
pub fn keytab_problem(bytes: &[u8]) -> Option<&'static str> {
    match bytes {
        [] => Some("is empty"),
        [0x05, 0x01 | 0x02, ..] => None,
        _ => Some("is not a Kerberos keytab (no 0x05 0x02 version header)"),
    }
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

/// The shared PEM reader's error names the key and file the same way.
impl From<crate::tls::pem::PemError> for ZkSecurityError {
    fn from(e: crate::tls::pem::PemError) -> Self {
        ZkSecurityError {
            key: e.key,
            problem: e.problem,
        }
    }
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
        Ok(ZkSecurity {
            tls,
            sasl,
            kerberos: None,
        })
    }

    /// Adds the SASL mechanism: `zk-sasl-mechanism` when given, else
    /// GSSAPI when a `zk-kerberos-*` key is set, else DIGEST-MD5 when
    /// `zk-sasl-user` is. A key the mechanism would ignore is an error.
    pub fn with_mechanism(mut self, k: KerberosKeys) -> Result<ZkSecurity, ZkSecurityError> {
        let err = |key: &'static str, problem: String| ZkSecurityError { key, problem };
        let kerberos_key = [
            ("zk-kerberos-principal", k.principal.is_some()),
            ("zk-kerberos-keytab", k.keytab.is_some()),
            ("zk-kerberos-service", k.service.is_some()),
            ("zk-kerberos-server-host", k.server_host.is_some()),
        ]
        .into_iter()
        .find_map(|(key, set)| set.then_some(key));
        let gssapi = match k.mechanism.as_deref() {
            Some("gssapi") => true,
            Some("digest-md5") => false,
            Some(other) => {
                return Err(err(
                    "zk-sasl-mechanism",
                    format!("{other:?} is not digest-md5 or gssapi"),
                ));
            }
            None if kerberos_key.is_some() && self.sasl.is_some() => {
                return Err(err(
                    "zk-sasl-mechanism",
                    "both zk-sasl-user (DIGEST-MD5) and zk-kerberos-* (GSSAPI) are set: set zk-sasl-mechanism to the one to use, and drop the other's keys".to_string(),
                ));
            }
            None => kerberos_key.is_some(),
        };
        if !gssapi {
            if let Some(key) = kerberos_key {
                return Err(err(
                    key,
                    "is for Kerberos (zk-sasl-mechanism = gssapi), but the mechanism is digest-md5"
                        .to_string(),
                ));
            }
            if k.mechanism.is_some() && self.sasl.is_none() {
                return Err(err(
                    "zk-sasl-user",
                    "zk-sasl-mechanism digest-md5 needs zk-sasl-user and zk-sasl-password-file"
                        .to_string(),
                ));
            }
            return Ok(self);
        }
        if self.sasl.is_some() {
            return Err(err(
                "zk-sasl-user",
                "is for DIGEST-MD5, but zk-sasl-mechanism is gssapi".to_string(),
            ));
        }
        if !cfg!(feature = "kerberos") {
            return Err(err(
                "zk-sasl-mechanism",
                "gssapi: this livy-proxy was built without Kerberos (the `kerberos` feature)"
                    .to_string(),
            ));
        }
        let nonempty = |key: &'static str, v: Option<String>| match v {
            Some(v) if v.trim().is_empty() => Err(err(key, "must not be empty".to_string())),
            v => Ok(v),
        };
        self.kerberos = Some(ZkKerberos {
            principal: nonempty("zk-kerberos-principal", k.principal)?,
            keytab: k.keytab,
            service: nonempty("zk-kerberos-service", k.service)?
                .unwrap_or_else(|| "zookeeper".to_string()),
            server_host: nonempty("zk-kerberos-server-host", k.server_host)?,
        });
        Ok(self)
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
        if let Some(keytab) = self.kerberos.as_ref().and_then(|k| k.keytab.as_ref()) {
            let bytes = std::fs::read(keytab).map_err(|e| bad("zk-kerberos-keytab", keytab, e))?;
            if let Some(problem) = keytab_problem(&bytes) {
                return Err(bad("zk-kerberos-keytab", keytab, problem));
            }
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
        match (&self.sasl, &self.kerberos) {
            (Some(s), _) => format!("{tls}, SASL DIGEST-MD5 as {}", s.user),
            (None, Some(k)) => format!(
                "{tls}, SASL GSSAPI (Kerberos) as {} to {}@{}",
                k.principal
                    .as_deref()
                    .unwrap_or("the credential cache's principal"),
                k.service,
                k.server_host.as_deref().unwrap_or("each host"),
            ),
            (None, None) => tls,
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
        #[cfg(feature = "kerberos")]
        if let Some(k) = &self.kerberos {
            let mut options = zk::SaslOptions::gssapi().with_username(k.service.clone());
            if let Some(host) = &k.server_host {
                options = options.with_hostname(host.clone());
            }
            connector = connector.with_sasl(options);
        }
        Ok(connector)
    }

    /// Before a new session with Kerberos: gets or renews the tickets on a
    /// blocking thread (it may wait for the KDC). `Err`: why the proxy
    /// cannot log in, naming the cause. Without Kerberos: `Ok` at once.
    pub async fn kerberos_login(&self) -> Result<Option<String>, String> {
        #[cfg(feature = "kerberos")]
        if let Some(k) = self.kerberos.clone() {
            return tokio::task::spawn_blocking(move || super::zk_kerberos::login(&k))
                .await
                .map_err(|e| format!("Kerberos login task failed: {e}"))?
                .map(Some);
        }
        Ok(None)
    }

    /// After a failed connect with Kerberos: the Kerberos failure, if the
    /// client's first GSSAPI step fails towards one of the hosts (see
    /// [`super::zk_kerberos::diagnose`]).
    pub async fn diagnose_kerberos(&self, connect: &str) -> Option<String> {
        #[cfg(feature = "kerberos")]
        if let Some(k) = self.kerberos.clone() {
            let hosts: Vec<String> = hosts(connect).into_iter().map(|(h, _)| h).collect();
            return tokio::task::spawn_blocking(move || super::zk_kerberos::diagnose(&k, &hosts))
                .await
                .unwrap_or_else(|e| Some(format!("Kerberos check failed: {e}")));
        }
        let _ = connect;
        None
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
        let mut roots = rustls::RootCertStore::empty();
        crate::tls::pem::add_roots(&mut roots, "zk-tls-ca", &t.ca)?;
        let identity = match &t.identity {
            None => None,
            Some((cert, key)) => Some(crate::tls::pem::Identity::read(
                "zk-tls-cert",
                cert,
                "zk-tls-key",
                key,
            )?),
        };
        let config = crate::tls::pem::client_config(roots, identity, &[], "zk-tls-ca")?;
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
    fn keytab_header() {
        assert_eq!(keytab_problem(&[0x05, 0x02, 0, 0]), None);
        assert_eq!(keytab_problem(&[0x05, 0x01]), None);
        assert_eq!(keytab_problem(b""), Some("is empty"));
        assert!(keytab_problem(b"not a keytab").is_some());
        assert!(keytab_problem(&[0x05]).is_some());
    }

    #[test]
    fn the_mechanism_follows_the_keys_and_refuses_the_others() {
        let digest = || {
            ZkSecurity::from_keys(None, None, None, Some("livy".into()), Some("pw".into())).unwrap()
        };
        let none = || ZkSecurity::default();
        let keys = |mechanism: Option<&str>, keytab: bool| KerberosKeys {
            mechanism: mechanism.map(str::to_string),
            keytab: keytab.then(|| PathBuf::from("k.keytab")),
            ..KerberosKeys::default()
        };
        let key_of = |r: Result<ZkSecurity, ZkSecurityError>| r.unwrap_err().key;
        // Inferred: no key, no SASL; the digest keys, DIGEST-MD5.
        assert_eq!(none().with_mechanism(keys(None, false)).unwrap(), none());
        assert_eq!(
            digest().with_mechanism(keys(None, false)).unwrap(),
            digest()
        );
        assert_eq!(
            key_of(digest().with_mechanism(keys(None, true))),
            "zk-sasl-mechanism"
        );
        assert_eq!(
            key_of(none().with_mechanism(keys(Some("digest-md5"), true))),
            "zk-kerberos-keytab"
        );
        assert_eq!(
            key_of(none().with_mechanism(keys(Some("digest-md5"), false))),
            "zk-sasl-user"
        );
        assert_eq!(
            key_of(none().with_mechanism(keys(Some("kerberos"), false))),
            "zk-sasl-mechanism"
        );
        if cfg!(feature = "kerberos") {
            assert_eq!(
                key_of(digest().with_mechanism(keys(Some("gssapi"), false))),
                "zk-sasl-user"
            );
            let k = none().with_mechanism(keys(None, true)).unwrap();
            let kerberos = k.kerberos.clone().unwrap();
            assert_eq!(kerberos.service, "zookeeper");
            assert_eq!(kerberos.keytab, Some(PathBuf::from("k.keytab")));
            assert!(
                k.describe().contains("SASL GSSAPI (Kerberos)"),
                "{}",
                k.describe()
            );
            // Only the mechanism: the process's credential cache.
            let k = none().with_mechanism(keys(Some("gssapi"), false)).unwrap();
            assert!(k.kerberos.unwrap().principal.is_none());
            let empty = KerberosKeys {
                service: Some(" ".into()),
                ..keys(Some("gssapi"), false)
            };
            assert_eq!(key_of(none().with_mechanism(empty)), "zk-kerberos-service");
        } else {
            assert_eq!(
                key_of(none().with_mechanism(keys(Some("gssapi"), false))),
                "zk-sasl-mechanism"
            );
        }
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
