//! TLS to Livy: the rustls client configuration every connection to a
//! Livy server is made with: the proxied requests' and the probes' to
//! `https://` nodes (`upstream-*`), and, with `thrift-tls-mode = reencrypt`,
//! the JDBC listener's to Livy's Thrift port (`thrift-upstream-*`, each
//! falling back to its `upstream-*` counterpart). One [`UpstreamTls`] per
//! use, built by the same code.
//!
//! Trust: the system's roots (rustls-native-certs: the operating system's
//! bundle, `/etc/ssl/certs` on Debian, or `SSL_CERT_FILE`/`SSL_CERT_DIR`)
//! plus the CAs in the CA bundle. The system store and not webpki-roots'
//! compiled-in Mozilla list, because Livy's certificates are nearly always
//! signed by a company CA, which operators install into the system store
//! once for every program on the host; the system bundle also gets its
//! updates with the OS instead of with a rebuild of the proxy.
//!
//! The server name checked is the node's host (a DNS name or an IP
//! address, as in its URL or Thrift address) unless a server name is
//! configured for every node (Livy servers behind one certificate for a
//! service name). A client certificate and key give the certificate sent
//! when Livy asks for one (mutual TLS). TLS 1.2 and 1.3, ALPN as the
//! protocol spoken (`http/1.1` to Livy's REST port, none to Thrift), the
//! *ring* provider, session resumption on (rustls' in-memory cache), so a
//! new pooled connection to the same server costs one round trip less.
//!
//! The files are re-read on SIGHUP and when they change on disk
//! ([`super::source::watch`] watches their directories, as it does the
//! listeners'): the new configuration applies to the next connection, and
//! one that does not load keeps the configuration in use, is logged and
//! counted (`livy_proxy_tls_reloads_total{listener="upstream"}` or
//! `{listener="jdbc_upstream"}`).

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};

use rustls::ClientConfig;
use rustls_pki_types::ServerName;

use super::TlsFileError;
use super::pem::{self, Identity, PemError};
use crate::metrics::Metrics;

/// ALPN to Livy's REST port: the proxy speaks HTTP/1.1 to Livy.
pub const ALPN_HTTP1: &[&[u8]] = &[b"http/1.1"];

/// The names of the keys an [`UpstreamTlsSpec`]'s values came from, for
/// errors and logs, and the `listener` label of its reload counters.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KeyNames {
    /// The `listener` label value of `livy_proxy_tls_reloads_total`.
    pub label: &'static str,
    /// The CA bundle's key.
    pub ca: &'static str,
    /// The client certificate's key.
    pub client_cert: &'static str,
    /// The client key's key.
    pub client_key: &'static str,
    /// The server name's key.
    pub server_name: &'static str,
}

impl KeyNames {
    /// TLS to `https://` Livy nodes.
    pub const UPSTREAM: KeyNames = KeyNames {
        label: "upstream",
        ca: "upstream-ca",
        client_cert: "upstream-client-cert",
        client_key: "upstream-client-key",
        server_name: "upstream-server-name",
    };
    /// TLS to Livy's Thrift port (`thrift-tls-mode = reencrypt`).
    pub const JDBC_UPSTREAM: KeyNames = KeyNames {
        label: "jdbc_upstream",
        ca: "thrift-upstream-ca",
        client_cert: "thrift-upstream-client-cert",
        client_key: "thrift-upstream-client-key",
        server_name: "thrift-upstream-server-name",
    };
}

/// What one TLS client to Livy is configured with: the paths and the name
/// as given, the keys they came from, the ALPN offered.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UpstreamTlsSpec {
    /// PEM CA certificates trusted beside the system's.
    pub ca: Option<PathBuf>,
    /// PEM chain sent to a Livy that asks.
    pub client_cert: Option<PathBuf>,
    /// Its private key.
    pub client_key: Option<PathBuf>,
    /// The name every Livy certificate is checked against instead of the
    /// node's host.
    pub server_name: Option<String>,
    /// Where each value came from.
    pub keys: KeyNames,
    /// ALPN protocols offered.
    pub alpn: &'static [&'static [u8]],
}

impl Default for UpstreamTlsSpec {
    /// Nothing set, for `https://` nodes (`upstream-*`, ALPN `http/1.1`).
    fn default() -> Self {
        UpstreamTlsSpec {
            ca: None,
            client_cert: None,
            client_key: None,
            server_name: None,
            keys: KeyNames::UPSTREAM,
            alpn: ALPN_HTTP1,
        }
    }
}

impl UpstreamTlsSpec {
    /// The files read, in order: CA bundle, client certificate, key.
    pub fn files(&self) -> Vec<&Path> {
        [&self.ca, &self.client_cert, &self.client_key]
            .into_iter()
            .flatten()
            .map(PathBuf::as_path)
            .collect()
    }
}

/// A client side of TLS to Livy, built at start and renewed from its files:
/// shared by the connections it makes (the proxy's pool and the probes, or
/// the JDBC listener's).
pub struct UpstreamTls {
    /// Swapped whole by a reload: new connections handshake with the new
    /// one, open ones keep theirs.
    config: arc_swap::ArcSwap<ClientConfig>,
    /// What it was built from, read again on a reload.
    spec: UpstreamTlsSpec,
    server_name: Option<ServerName<'static>>,
    /// How many roots came from the system store, for the start-up log.
    pub system_roots: usize,
    /// The files' bytes last tried (`None`: one could not be read), so a
    /// burst of events for one change loads it once.
    tried: Mutex<Option<Vec<u8>>>,
    metrics: OnceLock<Arc<Metrics>>,
    /// The client certificate's notAfter (Unix seconds), when one is
    /// configured: `livy_proxy_tls_certificate_expiry_seconds` with the
    /// client's label, so the alert that watches the listeners' expiry
    /// watches the certificate Livy checks too.
    client_not_after: Mutex<Option<i64>>,
}

impl std::fmt::Debug for UpstreamTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UpstreamTls")
            .field("spec", &self.spec)
            .field("system_roots", &self.system_roots)
            .finish_non_exhaustive()
    }
}

impl UpstreamTls {
    /// The connector new connections handshake with.
    pub fn connector(&self) -> tokio_rustls::TlsConnector {
        tokio_rustls::TlsConnector::from(self.config.load_full())
    }

    /// What it is built from.
    pub fn spec(&self) -> &UpstreamTlsSpec {
        &self.spec
    }

    /// Joins it to the process's metrics: its reload counters appear, at 0,
    /// when it has files to reload.
    pub fn attach(&self, metrics: Arc<Metrics>) {
        if !self.spec.files().is_empty() {
            metrics.tls_reloads_at_zero(self.spec.keys.label);
        }
        if let Some(not_after) = *self
            .client_not_after
            .lock()
            .unwrap_or_else(|e| e.into_inner())
        {
            metrics.tls_expiry(self.spec.keys.label, not_after);
        }
        let _ = self.metrics.set(metrics);
    }

    /// Reads the CA bundle and the client certificate and key again: a
    /// renewed one applies to the next connection to Livy; one that does
    /// not load keeps the configuration in use (logged, and counted when it
    /// has files). `trigger` says why, for the log. True if the new files
    /// are in force.
    pub fn reload(&self, trigger: &str) -> bool {
        let label = self.spec.keys.label;
        let now = super::source::read_all(&self.spec.files());
        let ok = match build(&self.spec) {
            Ok(built) => {
                self.config.store(Arc::new(built.config));
                *self
                    .client_not_after
                    .lock()
                    .unwrap_or_else(|e| e.into_inner()) = built.client_not_after;
                if let (Some(m), Some(not_after)) = (self.metrics.get(), built.client_not_after) {
                    m.tls_expiry(label, not_after);
                }
                tracing::info!(
                    listener = label,
                    trigger,
                    ca = self.spec.keys.ca,
                    client_cert = self.spec.keys.client_cert,
                    "TLS to Livy: CA bundle and client certificate reloaded"
                );
                true
            }
            Err(e) => {
                tracing::warn!(listener = label, trigger, error = %e, "TLS to Livy: reload failed, the configuration in use is kept");
                false
            }
        };
        *self.tried.lock().unwrap_or_else(|e| e.into_inner()) = now;
        if let Some(m) = self.metrics.get()
            && !self.spec.files().is_empty()
        {
            m.tls_reload(label, ok);
        }
        ok
    }

    /// The name a node's certificate must carry: the override, else `host`
    /// (an IP literal is checked against IP SANs).
    pub fn server_name(&self, host: &str) -> Result<ServerName<'static>, String> {
        if let Some(name) = &self.server_name {
            return Ok(name.clone());
        }
        ServerName::try_from(host.to_string())
            .map_err(|e| format!("{host:?} cannot be checked as a TLS server name: {e}"))
    }
}

impl super::source::Renewable for UpstreamTls {
    fn spec_files(&self) -> Vec<&Path> {
        self.spec.files()
    }

    fn last_tried(&self) -> &Mutex<Option<Vec<u8>>> {
        &self.tried
    }

    fn renew(&self, trigger: &str) {
        self.reload(trigger);
    }
}

/// What one reading of the files gives.
struct Built {
    config: ClientConfig,
    server_name: Option<ServerName<'static>>,
    system_roots: usize,
    client_not_after: Option<i64>,
}

fn build(spec: &UpstreamTlsSpec) -> Result<Built, TlsFileError> {
    let keyed = |e: PemError| TlsFileError {
        origin: String::new(),
        key: e.key.to_string(),
        problem: e.problem,
    };
    let mut roots = rustls::RootCertStore::empty();
    let native = rustls_native_certs::load_native_certs();
    for e in &native.errors {
        tracing::debug!(error = %e, "a system CA certificate could not be read");
    }
    let (system_roots, _) = roots.add_parsable_certificates(native.certs);
    if let Some(ca) = &spec.ca {
        pem::add_roots(&mut roots, spec.keys.ca, ca).map_err(keyed)?;
    }
    let server_name = spec
        .server_name
        .as_ref()
        .map(|name| {
            ServerName::try_from(name.clone()).map_err(|e| TlsFileError {
                origin: String::new(),
                key: spec.keys.server_name.to_string(),
                problem: format!("{name:?}: {e}"),
            })
        })
        .transpose()?;
    let unpaired = |key: &'static str, other: &'static str| TlsFileError {
        origin: String::new(),
        key: key.to_string(),
        problem: format!("set without {other} (a client certificate needs both)"),
    };
    let identity = match (&spec.client_cert, &spec.client_key) {
        (None, None) => None,
        (Some(_), None) => return Err(unpaired(spec.keys.client_cert, spec.keys.client_key)),
        (None, Some(_)) => return Err(unpaired(spec.keys.client_key, spec.keys.client_cert)),
        (Some(cert), Some(key)) => Some(
            Identity::read(spec.keys.client_cert, cert, spec.keys.client_key, key)
                .map_err(keyed)?,
        ),
    };
    let client_not_after = identity.as_ref().and_then(Identity::not_after);
    let config = pem::client_config(roots, identity, spec.alpn, spec.keys.ca).map_err(keyed)?;
    Ok(Built {
        config,
        server_name,
        system_roots,
        client_not_after,
    })
}

/// Builds the client configuration (see the module docs). A file that
/// cannot be read or holds no usable PEM is an error naming its key; a
/// system store that cannot be read is not (its errors are logged): with
/// a CA bundle the proxy does not need it.
pub fn upstream_tls(spec: &UpstreamTlsSpec) -> Result<UpstreamTls, TlsFileError> {
    // The bytes before the build: a change in between is seen again.
    let tried = super::source::read_all(&spec.files());
    let built = build(spec)?;
    Ok(UpstreamTls {
        config: arc_swap::ArcSwap::from_pointee(built.config),
        spec: spec.clone(),
        server_name: built.server_name,
        system_roots: built.system_roots,
        tried: Mutex::new(tried),
        metrics: OnceLock::new(),
        client_not_after: Mutex::new(built.client_not_after),
    })
}

/// The TLS reason inside an I/O error from a handshake or a read, if the
/// error is TLS's (a certificate refused, an alert from Livy, a peer that
/// does not speak TLS) rather than the network's.
pub fn tls_reason(e: &std::io::Error) -> Option<&rustls::Error> {
    e.get_ref()?.downcast_ref::<rustls::Error>()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_host_is_the_server_name_unless_overridden() {
        let tls = upstream_tls(&UpstreamTlsSpec::default()).unwrap();
        assert_eq!(
            tls.server_name("livy1.example").unwrap(),
            ServerName::try_from("livy1.example").unwrap()
        );
        assert!(matches!(
            tls.server_name("127.0.0.11").unwrap(),
            ServerName::IpAddress(_)
        ));
        assert!(matches!(
            tls.server_name("::1").unwrap(),
            ServerName::IpAddress(_)
        ));
        let tls = upstream_tls(&UpstreamTlsSpec {
            server_name: Some("livy.service".into()),
            ..Default::default()
        })
        .unwrap();
        assert_eq!(
            tls.server_name("127.0.0.11").unwrap(),
            ServerName::try_from("livy.service").unwrap()
        );
    }

    #[test]
    fn bad_files_name_their_key() {
        let dir = tempfile::tempdir().unwrap();
        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, "").unwrap();
        let e = upstream_tls(&UpstreamTlsSpec {
            ca: Some(empty.clone()),
            ..Default::default()
        })
        .unwrap_err();
        assert_eq!(e.key, "upstream-ca");
        let e = upstream_tls(&UpstreamTlsSpec {
            client_cert: Some(empty.clone()),
            ..Default::default()
        })
        .unwrap_err();
        assert_eq!(e.key, "upstream-client-cert");
        let e = upstream_tls(&UpstreamTlsSpec {
            server_name: Some("not a name".into()),
            ..Default::default()
        })
        .unwrap_err();
        assert_eq!(e.key, "upstream-server-name");
        // The JDBC side's keys are named for its files.
        let e = upstream_tls(&UpstreamTlsSpec {
            client_key: Some(empty.clone()),
            keys: KeyNames::JDBC_UPSTREAM,
            ..Default::default()
        })
        .unwrap_err();
        assert_eq!(e.key, "thrift-upstream-client-key");
    }
}
